"""`fit`: the training loop around the compiled-step runner.

The loop body is `fit` itself; what surrounds it lives elsewhere: `_Run` here (set-up, the log
window, evaluation, checkpoints, the end of a run), `functrain._fit_args` (checking fit's
arguments, the settings among its callbacks), `functrain._resume` (continuing from a
checkpoint), `functrain._signals` (Ctrl-C / SIGTERM), `functrain._evaluate` (evaluation),
`functrain.callbacks` (progress bar, summary, non-finite guard), `functrain._run_config`
(`Logging`, `Checkpointing`) and `functrain._loop_state` (the position saved in checkpoints).
"""

from __future__ import annotations

import datetime
import functools
import itertools
import os
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import torch

from . import _rng_state
from ._data_helpers import loader_len
from ._donation import is_donated
from ._evaluate import Evaluator
from ._fit_args import check_fit_args, moved_keyword, training_runner
from ._loader_state import LoaderOrder
from ._loop_state import LoopState
from ._multistep import group_batches, stacked_batch_size
from ._placement import batch_size
from ._resume import EpochBatches, resume_from, warn_if_inexact
from ._run_config import Logging
from ._runner import CompiledStep
from ._signals import Preempted, StopSignal
from ._state import TrainState
from ._window import NONFINITE, NONFINITE_PARAMS, MetricWindow, nonfinite_steps
from .callbacks._protocol import Callback, Loop
from .callbacks._run import NonFiniteGuard, ProgressBar

STOP_FLAG = "__stop__"  # on several ranks: a stop signal, gathered with the metric window

__all__ = ["fit"]


def _refuse_moved_keywords(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fit(..., log=...)`` / ``checkpoint=...``: a TypeError saying where they went."""

    @functools.wraps(fn)
    def fit(*args: Any, **kwargs: Any) -> Any:
        moved_keyword(kwargs)
        return fn(*args, **kwargs)

    return fit


@_refuse_moved_keywords
def fit(
    step_fn: Callable[[Any, Any], tuple[Any, Any]] | CompiledStep,
    state: Any,
    loader: Iterable[Any],
    *,
    epochs: int | None = None,
    max_steps: int | None = None,
    eval_fn: Callable[[Any, Any], Any] | None = None,
    eval_loader: Iterable[Any] | None = None,
    eval_every: int | None = None,
    device: str | torch.device = "auto",
    precision: Any = "32",
    compile: str | bool = "auto",
    callbacks: Sequence[Callback] = (),
    run_dir: str | os.PathLike[str] | None = None,
    resume: str | os.PathLike[str] | None = None,
) -> Any:
    """Train: run ``step_fn`` over ``loader`` through the compiled-step runner.

    Metric windows are read once every ``Logging.every`` steps (one host transfer per window)
    and go to the loggers (JSONL and CSV under ``run_dir``, TensorBoard when installed), the
    progress bar and the callbacks. Ctrl-C / SIGTERM stop cleanly at the next step boundary.

    Started by ``torchrun`` on several ranks, the same call trains data parallel: each rank
    takes its shard of ``loader`` and ``eval_loader``, the gradients are averaged inside the
    compiled step, metric windows and evaluations are reduced over the ranks when read, rank 0
    alone logs, and checkpoints are written by all ranks together (see `functrain.distributed`
    and the README, "Multi-GPU and multi-node").

    Args:
        step_fn: ``step_fn(state, batch) -> (state, metrics)``, pure; metrics a dict of 0-d
            tensors (means over the window) or `functrain.metrics` values. Or a
            `functrain.compile_step` runner, for its rarer options (``on_recompile``,
            ``devices``, ``check_finite``, ``steps_per_call``: K steps per compiled call,
            logging, evaluating and checkpointing at the first K-boundary at or after each
            due step); ``device``, ``precision``, ``compile`` stay unset.
        state: the initial state (usually a `functrain.TrainState`); donated: use the returned
            state afterwards.
        loader: an iterable of batches (tensors, or tuples/dicts of tensors), once per epoch.
        epochs: how many passes over ``loader``.
        max_steps: stop after this many steps in total (counting from ``state.step`` at the
            start of the run), even mid-epoch. At least one of the two is required.
        eval_fn: ``eval_fn(state, batch) -> metrics``, run over ``eval_loader`` (required with
            it); training always ends with an evaluation. Compiled like the step, unless
            marked ``ft.eager(eval_fn)`` (`functrain.eager`): then it runs eagerly while the
            step stays compiled (torchmetrics, ``.item()``, ``print`` work in it).
        eval_loader: the evaluation batches.
        eval_every: evaluate every this many steps (an int), or this fraction of an epoch (a
            float in (0, 1), Lightning's ``val_check_interval``: ``0.25`` evaluates after each
            quarter of every epoch); ``None``: at the end of every epoch. Besides the
            ``Logging.every`` windows, each epoch's end logs the epoch's training means as
            ``train/<name>_epoch`` (each window weighted by its steps; after a mid-epoch
            resume, the resumed part of that epoch).
        device: ``"auto"`` (CUDA if available, else CPU), ``"cpu"``, ``"cuda"``, ``"xla"``,
            ``"tpu"`` (torch_xla; see the README, "Run on TPU"), ...
        precision: ``"32"``, ``"bf16-mixed"``, ``"16-mixed"``, ``"bf16-true"`` or a
            `functrain.precision.Policy` (see `functrain.precision`).
        compile: ``"auto"``, ``"inductor"``, ``"cudagraphs"``, ``"openxla"``, ``"eager"`` (see
            `functrain.compile_step`).
        callbacks: `functrain.Callback` objects, called in order, and the run's settings
            (at most one of each): a `functrain.Logging` (log interval, loggers, hparams,
            progress bar, summary; default ``Logging()``, ``Logging.quiet()`` for none; its
            progress bar and summary run after the user's callbacks) and a
            `functrain.Checkpointing` (every N steps, how many to keep; default: none).
        run_dir: where logs and checkpoints go; default ``runs/<date>-<time>`` (only created
            if something is written).
        resume: ``"auto"``: continue from the newest intact checkpoint in
            ``run_dir/checkpoints`` if any (if every one is corrupt, raise
            `functrain.checkpoint.CheckpointError` listing them); a path: from that checkpoint,
            moving newer ones there aside (a rollback). ``None`` with checkpoints in
            ``run_dir/checkpoints``: start afresh and move them aside. ``epochs`` and
            ``max_steps`` then count from the start of the original run. The resume is exact
            (README, "Failure and resume guarantees") with a loader with ``set_epoch``, a list,
            a ``DataLoader`` over a map-style dataset with its default sampler, or torchdata's
            ``StatefulDataLoader``; the global random generators are restored too. Otherwise
            every resume warns why it may not be.

    Gradient accumulation and skipping non-finite updates are optimizer wrappers
    (`functrain.optim.MultiSteps`, `functrain.optim.apply_if_finite`) around ``state.tx``;
    `functrain.callbacks.NonFiniteGuard` raises, stops or warns on inf/NaN.

    Returns:
        The final state (or, after Ctrl-C / a callback's stop / a non-finite guard's stop, the
        last complete step's state). A `functrain.TrainState` says why in
        ``state.stop_reason``: ``None`` when the run went to its end, else the reason.

    Raises:
        ValueError / TypeError: for bad arguments, naming the argument, before any step
            (``log=`` / ``checkpoint=`` are refused: they are callbacks now).
        KeyboardInterrupt: at a second Ctrl-C, at once (the first one stops at the next step
            boundary and returns); checkpoints already written are intact.
        functrain.Preempted: after a SIGTERM, once the checkpoint is written and the logs are
            closed: a ``SystemExit`` with status 143, so the process ends as pre-empted, not
            finished. To go on instead, catch it: ``except ft.Preempted as e: state = e.state``.

    Example:
        >>> import torch, functrain as ft
        >>> model = torch.nn.Linear(3, 1)
        >>> def step(state, batch):
        ...     x, y = batch
        ...     def loss_fn(params):
        ...         out, _ = ft.call(model, params, state.buffers, x)
        ...         return ((out - y) ** 2).mean()
        ...     grads, loss = torch.func.grad_and_value(loss_fn)(state.params)
        ...     return state.apply_gradients(grads), {"loss": loss}
        >>> data = [(torch.randn(8, 3), torch.randn(8, 1)) for _ in range(4)]
        >>> state = ft.TrainState.create(model, ft.optim.sgd(0.1))
        >>> state = ft.fit(step, state, data, epochs=2, compile="eager",
        ...                callbacks=[ft.Logging.quiet()])
        >>> int(state.step)
        8
    """
    run = _Run(step_fn, state, loader, epochs=epochs, max_steps=max_steps, eval_fn=eval_fn,
               eval_loader=eval_loader, eval_every=eval_every, device=device,
               precision=precision, compile=compile, callbacks=callbacks, run_dir=run_dir,
               resume=resume)
    loop, runner, pos, every = run.loop, run.runner, run.position, run.every
    window: MetricWindow | None = None
    done = run.end_step is not None and loop.step >= run.end_step  # e.g. a finished run
    with StopSignal() as stop, run:
        run.stop = stop
        epoch, skip = pos.epoch, pos.batch_in_epoch
        while not done and (epochs is None or epoch < epochs):
            loop.epoch, run.batch_in_epoch, run.epoch_finished = epoch, skip, False
            for k, batch in run.step_batches(epoch, skip):
                if k == 1:
                    loop.state, window = runner.run(loop.state, batch, window)   # step
                    n = batch_size(batch) or 0
                else:  # K stacked batches, K steps in one call (steps_per_call)
                    loop.state, window = runner.run_steps(loop.state, batch, window)
                    n = k * (stacked_batch_size(batch) or 0)
                n *= run.world  # the global batch
                before, loop.step = loop.step, loop.step + k                 # count
                run.batch_in_epoch += k
                loop.samples += n
                run.window_steps += k
                run.window_samples += n
                if loop.step // every > before // every:                    # log window
                    window = run.flush(window)
                if run.evaluates_by_step and run.eval_due(before):          # evaluate
                    run.evaluate()
                done = loop.step == run.end_step or run.should_stop(stop)   # stop
                if (run.checkpoint and not done
                        and any(map(run.checkpoint.due, range(before + 1, loop.step + 1)))):
                    if run.saveable(window):                                 # checkpoint
                        run.save(window, blocking=False)
                    else:  # the guard acts now (raise / stop / warn); nothing is written
                        window = run.flush(window)
                        done = run.should_stop(stop)
                if done:
                    break
            else:
                run.epoch_finished = True  # every batch of the epoch ran
            run.check_epoch_ran(epoch)
            window = run.flush(window) if run.window_steps else window
            run.log_epoch_means()
            epoch, skip = epoch + 1, 0
            if not done and eval_every is None:
                run.evaluate()
            done = run.should_stop(stop) or done  # a stop asked at the epoch's end
        run.finish(window)
    if isinstance(loop.state, TrainState):  # says why it stopped (None: ran to its end)
        object.__setattr__(loop.state, "stop_reason", loop.stop_reason)
    if stop.terminated:  # pre-empted: saved and closed; exit 143 unless the caller catches it
        raise Preempted(loop.state, loop.stop_reason or "received SIGTERM")
    return loop.state


class _Run:
    """Everything of a `fit` run except its loop: set-up, the log window, evaluation,
    checkpoints and the end of the run (a context manager around the loop)."""

    def __init__(self, step_fn: Any, state: Any, loader: Iterable[Any], *, epochs: int | None,
                 max_steps: int | None, eval_fn: Any, eval_loader: Any, eval_every: Any,
                 device: Any, precision: Any, compile: Any, callbacks: Sequence[Callback],
                 run_dir: Any, resume: Any) -> None:
        args = check_fit_args(loader, epochs=epochs, max_steps=max_steps, eval_fn=eval_fn,
                              eval_loader=eval_loader, eval_every=eval_every,
                              callbacks=callbacks, run_dir=run_dir, resume=resume)
        log, checkpoint = args.log, args.checkpoint
        self.eval_steps, self.eval_in_epoch = args.eval_steps, args.eval_in_epoch
        self.evaluates_by_step = bool(self.eval_steps or self.eval_in_epoch)  # else by epoch
        self.guard = next((cb for cb in args.callbacks if isinstance(cb, NonFiniteGuard)), None)
        self.unsaveable = False  # a guard saw a step whose state must not become a checkpoint
        check_finite = self.guard is not None
        # Several ranks (torchrun): join the group, shard the data, average in the step.
        from .distributed._loop import DataParallelRun

        self.dp = dp = DataParallelRun.detect()
        self.world = 1 if dp is None else dp.world_size
        self.agreed_stop: str | None = None
        self.stop: StopSignal | None = None
        if dp is not None:
            loader = dp.shard_train(loader)
            eval_loader = None if eval_loader is None else dp.shard_eval(eval_loader)
            step_fn = dp.wrap_step(step_fn)  # a CompiledStep too: the same semantics
            if not dp.is_main:  # one voice: rank 0 logs, shows progress and summarises
                log = Logging.quiet(log.every)
            compile = dp.compile_backend(compile, device)
        self.runner = training_runner(step_fn, device, precision, compile, check_finite)
        self.evaluator = Evaluator(eval_fn, self.runner) if eval_fn is not None else None
        self.eval_loader = eval_loader
        # -- the run's parts ----------------------------------------------------------------
        if run_dir is None and (log.loggers is None or checkpoint or resume):
            run_dir = os.path.join("runs", datetime.datetime.now().strftime("%Y%m%d-%H%M%S"))
            if dp is not None:  # the ranks' clocks may straddle a second
                run_dir = dp.broadcast_object(run_dir)
        self.run_dir = None if run_dir is None else str(run_dir)
        self.checkpoint = checkpoint
        self.manager = None
        if checkpoint or resume:
            from .checkpoint import CheckpointManager

            self.manager = CheckpointManager(os.path.join(self.run_dir, "checkpoints"),
                                             keep=checkpoint.keep if checkpoint else None,
                                             process_group=None if dp is None else dp.group)
        self.every = log.every
        self.user_tx = getattr(state, "tx", None)
        state, position = resume_from(self.manager, resume, state, self.runner.policy, dp)
        self.resumed = position is not None
        if dp is not None:  # rank 0's state everywhere, gradients averaged by the optimizer
            state = dp.prepare_state(state, resumed=self.resumed)
        self.position = pos = position or LoopState()
        start_step = int(state.step) if hasattr(state, "step") else 0  # one sync, at start
        self.start_step = start_step
        self.run_start = pos.run_start if self.resumed else start_step
        self.end_step = None if max_steps is None else self.run_start + max_steps
        total = self.end_step
        n_batches = loader_len(loader)
        if epochs is not None and n_batches is not None:
            by_epochs = self.run_start + epochs * n_batches
            total = by_epochs if total is None else min(total, by_epochs)
        if self.runner.background is not None:  # compile="auto": may a compile have a core?
            self.runner.background.plan(None if total is None else total - start_step)
        self.loop = Loop(state=state, step=start_step, epoch=pos.epoch, run_dir=self.run_dir,
                         callbacks=(*args.callbacks, *log.callbacks()), samples=pos.samples,
                         run_start=self.run_start,
                         loggers=tuple(log.make_loggers(self.run_dir)), total_steps=total,
                         total_epochs=epochs)
        for cb in self.loop.callbacks:
            if cb.state_key in pos.callbacks:
                cb.load_state_dict(pos.callbacks[cb.state_key])
        self.batch_in_epoch = pos.batch_in_epoch
        self.window_steps, self.window_samples = pos.window_steps, pos.window_samples
        self.saved_window = pos.window or None  # merged into the first step's window
        if dp is not None and not dp.is_main and self.saved_window:
            # The saved window is the ranks' merged one: rank 0 carries it on.
            self.saved_window = tuple(torch.zeros_like(t) for t in self.saved_window)
        self.epoch_finished = False
        self.epoch_sums: dict[str, float] = {}  # step-weighted sums of the epoch's windows
        self.epoch_steps = 0
        self.evaluated_at: int | None = None
        seed = pos.data_seed if pos.data_seed is not None else torch.initial_seed()
        self.order = LoaderOrder(loader, seed=seed)
        self.batches = EpochBatches(loader, self.order, self.runner, pos)
        if self.resumed and not (self.end_step is not None and start_step >= self.end_step):
            warn_if_inexact(self.order, pos.batch_in_epoch, pos.rng)
        hparams = {**(log.hparams or {}), "epochs": epochs, "max_steps": max_steps,
                   "log_every": log.every, "compile": self.runner.backend,
                   "device": str(self.runner.device), "precision": str(precision),
                   "start_step": start_step}
        try:
            for lg in self.loop.loggers:
                lg.log_hparams(hparams)
            for cb in self.loop.callbacks:
                cb.on_run_start(self.loop)
        except BaseException:  # a logger may own a thread (TensorBoard's writer): close them
            for lg in self.loop.loggers:
                lg.close()
            raise
        bars = [cb for cb in self.loop.callbacks if isinstance(cb, ProgressBar)]
        self.runner.status = bars[0].show_status if bars else None  # "compiling (N s)"
        if log.sanity_eval and self.evaluator is not None and not self.resumed:
            self.sanity_eval(log.sanity_eval)

    def sanity_eval(self, batches: int) -> None:
        """Run the evaluation on the first ``batches`` batches of the evaluation loader, before
        training (not logged), so that an error in ``eval_fn`` surfaces at once."""
        if isinstance(self.eval_loader, Iterator):
            return  # a one-pass iterator: its batches are for the real evaluations
        try:
            self.evaluator(self.loop.state, itertools.islice(self.eval_loader, batches))
        except Exception as e:
            if not hasattr(e, "add_note"):  # Python 3.10
                raise
            e.add_note("functrain: raised by the sanity evaluation (eval_fn on the first "
                       f"{batches} batches of eval_loader, before training). "
                       "Turn it off with callbacks=[ft.Logging(sanity_eval=0)].")
            raise

    # -- the loop's parts ------------------------------------------------------------------
    def step_batches(self, epoch: int, skip: int) -> Iterator[tuple[int, Any]]:
        """``(k, batch)`` pairs: ``k`` steps per call over ``k`` stacked batches when the
        runner has ``steps_per_call=k``, else (and for the rest of an epoch, or the steps left
        before ``max_steps``) one batch at a time."""
        batches = self.batches(epoch, skip)
        k = self.runner.steps_per_call
        if k == 1:
            return ((1, b) for b in batches)
        left = None if self.end_step is None else self.end_step - self.loop.step
        return group_batches(batches, k, left)

    def flush(self, window: MetricWindow | None) -> MetricWindow | None:
        """Read the metric window, log it, tell the callbacks; start the next window."""
        if window is None:
            return None
        if self.saved_window is not None:  # the window a resumed run stopped in
            window, self.saved_window = window.merge_saved(self.saved_window), None
        values = window.compute(None if self.dp is None else self._reduce_with_stop)
        if self.dp is not None and values.pop(STOP_FLAG, 0.0) > 0:
            self.agreed_stop = self.stop.reason or "received a signal on another rank"
        window = window.reset()
        loop = self.loop
        loop.nonfinite_step = int(values.pop(NONFINITE, 0) or 0)
        loop.nonfinite_params_step = int(values.pop(NONFINITE_PARAMS, 0) or 0)
        if loop.nonfinite_step and self.guard is not None and (
                self.guard.action != "skip" or loop.nonfinite_params_step):
            self.unsaveable = True  # the state is (or may be) poisoned: no more checkpoints
        values = {f"train/{k}": v for k, v in values.items()}
        loop.log_time = time.perf_counter()  # the bar's and the summary's clock
        for k, v in values.items():
            self.epoch_sums[k] = self.epoch_sums.get(k, 0.0) + v * self.window_steps
        self.epoch_steps += self.window_steps
        if values:
            loop.log(values)
        for cb in loop.callbacks:
            cb.on_log(loop, values)
        self.window_steps = self.window_samples = 0
        return window

    def eval_due(self, before: int) -> bool:
        """Whether an evaluation fell due in the steps after ``before`` up to now (every
        ``eval_every`` steps, or a fraction of an epoch counted from the epoch's start)."""
        if self.eval_steps:
            return _crossed(before, self.loop.step, self.eval_steps)
        done = self.loop.step - before
        return bool(self.eval_in_epoch) and _crossed(
            self.batch_in_epoch - done, self.batch_in_epoch, self.eval_in_epoch)

    def log_epoch_means(self) -> None:
        """Log the epoch's training means, ``train/<name>_epoch`` (Lightning's
        ``on_epoch=True``): each window's values weighted by its steps."""
        if self.epoch_steps and self.epoch_sums:
            self.loop.log({f"{k}_epoch": v / self.epoch_steps
                           for k, v in self.epoch_sums.items()})
        self.epoch_sums, self.epoch_steps = {}, 0

    def evaluate(self) -> None:
        """Evaluate (with an ``eval_fn``), log ``val/...`` values, tell the callbacks."""
        if self.evaluator is None:
            return
        loop = self.loop
        self.evaluated_at = loop.step
        values = {f"val/{k}": v for k, v in self.evaluator(
            loop.state, self.eval_loader, None if self.dp is None else self.dp.reduce).items()}
        loop.log(values)
        for cb in loop.callbacks:
            cb.on_eval(loop, values)

    def should_stop(self, stop: StopSignal) -> bool:
        """Whether a signal or a callback asked to stop (recording why)."""
        loop = self.loop
        if not (stop.reason or loop.stop_reason or self.agreed_stop):
            return False  # the common case, checked after every step
        # On several ranks, a signal counts once every rank knows of it (at a log window).
        signalled = stop.reason if self.dp is None else self.agreed_stop
        if signalled or loop.stop_reason:
            loop.stop_reason = loop.stop_reason or signalled
            return True
        return False

    def saveable(self, window: MetricWindow | None) -> bool:
        """With a `NonFiniteGuard`: whether the state may be checkpointed, i.e. no step so far
        was non-finite (with ``"skip"``: the params are finite). One small host read."""
        if self.guard is None or self.unsaveable:
            return not self.unsaveable
        first, params = nonfinite_steps(window)
        return not (params if self.guard.action == "skip" else first)

    def _reduce_with_stop(self, metrics: Any) -> Any:
        """The ranks' windows merged, and whether any rank had a stop signal: one collective."""
        from .metrics import Sum

        flag = Sum.from_value(float(self.stop is not None and self.stop.reason is not None))
        return self.dp.reduce({**metrics, STOP_FLAG: flag})

    def save(self, window: MetricWindow | None, blocking: bool) -> None:
        """Save the state and the loop's position as the checkpoint of the current step."""
        loop = self.loop
        done = self.epoch_finished
        if window is not None and self.saved_window is not None:
            window, self.saved_window = window.merge_saved(self.saved_window), None
        reduce = None if self.dp is None else self.dp.reduce  # the ranks' merged window
        tensors = (window.tensors(reduce) if window is not None
                   else self.saved_window or ())
        if self.dp is not None and window is None and tensors:
            tensors = self.dp.broadcast(list(tensors))  # rank 0 holds the merged window
        position = LoopState(
            epoch=loop.epoch + done, batch_in_epoch=0 if done else self.batch_in_epoch,
            samples=loop.samples, run_start=self.run_start, window_steps=self.window_steps,
            window_samples=self.window_samples,
            window=tuple(tensors),
            callbacks=loop.callback_states(), data_seed=self.order.seed,
            rng=_rng_state.capture(), loader=self.order.state_dict())
        self.manager.save(loop.step, loop.state, position.to_meta(), blocking=blocking)

    def check_epoch_ran(self, epoch: int) -> None:
        if self.batch_in_epoch == 0:
            raise ValueError(f"loader yielded no batches in epoch {epoch}. HINT: an iterator is "
                             "exhausted after one pass; pass a re-iterable (a DataLoader or a "
                             "list).")

    def finish(self, window: MetricWindow | None) -> None:
        """The end of a run: a last evaluation and checkpoint (a resumed run that had nothing
        left to do neither evaluates again nor rewrites the checkpoint it started from)."""
        loop = self.loop
        idle_resume = self.resumed and loop.step == self.start_step
        if (self.evaluator is not None and not loop.stop_reason
                and self.evaluated_at != loop.step and not idle_resume):
            self.evaluate()
        if self.checkpoint and not idle_resume and self.saveable(window):  # the end, or a stop
            self.save(window, blocking=True)

    def __enter__(self) -> _Run:
        return self

    def __exit__(self, kind: Any, error: Any, tb: Any) -> bool:
        loop = self.loop
        second = getattr(error, "functrain_second_interrupt", False)
        if kind is KeyboardInterrupt and not second:
            loop.stop_reason = "interrupted (KeyboardInterrupt)"
        elif error is not None:
            loop.stop_reason = "interrupted (a second Ctrl-C)" if second else loop.stop_reason
            loop.error = error
        self.order.close()
        if self.runner.background is not None:
            self.runner.background.plan(None)  # the run's plan ends with it
        if is_donated(loop.state):  # interrupted between donation and hand-back
            loop.state = self.runner.last_state()
        if self.dp is not None and hasattr(loop.state, "replace"):
            loop.state = loop.state.replace(tx=self.user_tx)  # the user's optimizer back
        loop.compiles = self.runner.compiles
        loop.compile_time = self.runner.compile_time
        loop.compile_cache_hits = getattr(self.runner, "cache_hits", 0)
        loop.compile_note = getattr(getattr(self.runner, "background", None), "note", None)
        self.runner.status = None
        try:
            if self.manager is not None:
                self.manager.wait()
        finally:
            for cb in loop.callbacks:
                cb.on_run_end(loop)
            for lg in loop.loggers:
                lg.close()
        return kind is KeyboardInterrupt and not second


def _crossed(before: int, after: int, every: int) -> bool:
    """Whether a multiple of ``every`` lies in ``(before, after]`` (a K-step call may pass
    one without landing on it)."""
    return after // every > before // every
