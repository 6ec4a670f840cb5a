"""`fit`: the training loop around the compiled-step runner.

The loop body is `fit` itself; what surrounds it lives elsewhere: `_Run` here (set-up, the log
window, evaluation, checkpoints, the end of a run), `functrain._signals` (Ctrl-C / SIGTERM),
`functrain._evaluate` (evaluation), `functrain.callbacks` (progress bar, summary,
non-finite guard), `functrain._run_config` (`Logging`, `Checkpointing`) and
`functrain._loop_state` (the position saved in checkpoints).
"""

from __future__ import annotations

import datetime
import itertools
import os
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import torch

from ._donation import is_donated
from ._errors import check_int, check_number
from ._evaluate import Evaluator, check_loader, runner_for
from ._loop_state import LoopState
from ._placement import batch_size, prefetch
from ._run_config import Checkpointing, Logging
from ._runner import NONFINITE, CompiledStep
from ._signals import StopSignal
from ._window import MetricWindow
from .callbacks._protocol import Callback, Loop
from .callbacks._run import NonFiniteGuard
from .precision import Policy

__all__ = ["fit"]


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
    log: Logging | bool = True,
    checkpoint: Checkpointing | None = None,
) -> Any:
    """Train: run ``step_fn`` over ``loader`` through the compiled-step runner.

    Metric windows are read once every ``log.every`` steps (one host transfer per window) and
    go to the loggers (JSONL and CSV under ``run_dir``, TensorBoard when installed), the
    progress bar and the callbacks. Ctrl-C / SIGTERM stop cleanly at the next step boundary.

    Args:
        step_fn: ``step_fn(state, batch) -> (state, metrics)``, pure; metrics a dict of 0-d
            tensors (means over the window) or `functrain.metrics` values. Or a
            `functrain.compile_step` runner, for its rarer options (``on_recompile``,
            ``devices``, ``check_finite``); ``device``, ``precision``, ``compile`` stay unset.
        state: the initial state (usually a `functrain.TrainState`); donated: use the returned
            state afterwards.
        loader: an iterable of batches (tensors, or tuples/dicts of tensors), once per epoch.
        epochs: how many passes over ``loader``.
        max_steps: stop after this many steps in total (counting from ``state.step`` at the
            start of the run), even mid-epoch. At least one of the two is required.
        eval_fn: ``eval_fn(state, batch) -> metrics``, run over ``eval_loader`` (required with
            it); training always ends with an evaluation.
        eval_loader: the evaluation batches.
        eval_every: evaluate every this many steps (an int), or this fraction of an epoch (a
            float in (0, 1), Lightning's ``val_check_interval``: ``0.25`` evaluates after each
            quarter of every epoch); ``None``: at the end of every epoch. Besides the
            ``log.every`` windows, each epoch's end logs the epoch's training means as
            ``train/<name>_epoch`` (each window weighted by its steps; after a mid-epoch
            resume, the resumed part of that epoch).
        device: ``"auto"`` (CUDA if available, else CPU), ``"cpu"``, ``"cuda"``, ``"xla"``,
            ``"tpu"`` (torch_xla; see the README, "Run on TPU"), ...
        precision: ``"32"``, ``"bf16-mixed"``, ``"16-mixed"``, ``"bf16-true"`` or a
            `functrain.precision.Policy` (see `functrain.precision`).
        compile: ``"auto"``, ``"inductor"``, ``"cudagraphs"``, ``"openxla"``, ``"eager"`` (see
            `functrain.compile_step`).
        callbacks: `functrain.Callback` objects, called in order (before the defaults that
            ``log`` adds: progress bar, summary).
        run_dir: where logs and checkpoints go; default ``runs/<date>-<time>`` (only created
            if something is written).
        resume: ``"auto"``: continue from the newest intact checkpoint in
            ``run_dir/checkpoints`` if any; a path: from that checkpoint. ``epochs`` and
            ``max_steps`` then count from the start of the original run. Exact resumption needs
            a loader whose order is a function of the epoch (one with ``set_epoch``).
        log: a `functrain.Logging` (log interval, loggers, hparams, progress bar, summary);
            ``True``: the defaults; ``False``: no loggers, progress bar or summary.
        checkpoint: a `functrain.Checkpointing` (every N steps, how many to keep); ``None``:
            no checkpoints.

    Gradient accumulation and skipping non-finite updates are optimizer wrappers
    (`functrain.optim.MultiSteps`, `functrain.optim.apply_if_finite`) around ``state.tx``;
    `functrain.callbacks.NonFiniteGuard` raises, stops or warns on inf/NaN.

    Returns:
        The final state (or, after Ctrl-C / SIGTERM / a callback's stop, the last complete
        step's state).

    Raises:
        ValueError / TypeError: for bad arguments, naming the argument, before any step.

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
        >>> state = ft.fit(step, state, data, epochs=2, compile="eager", log=False)
        >>> int(state.step)
        8
    """
    run = _Run(step_fn, state, loader, epochs=epochs, max_steps=max_steps, eval_fn=eval_fn,
               eval_loader=eval_loader, eval_every=eval_every, device=device,
               precision=precision, compile=compile, callbacks=callbacks, run_dir=run_dir,
               resume=resume, log=log, checkpoint=checkpoint)
    loop, runner, pos, every = run.loop, run.runner, run.position, run.every
    window: MetricWindow | None = None
    done = run.end_step is not None and loop.step >= run.end_step  # e.g. a finished run
    with StopSignal() as stop, run:
        epoch, skip = pos.epoch, pos.batch_in_epoch
        while not done and (epochs is None or epoch < epochs):
            loop.epoch, run.batch_in_epoch, run.epoch_finished = epoch, skip, False
            for batch in run.batches(epoch, skip):
                loop.state, window = runner.run(loop.state, batch, window)   # step
                loop.step += 1                                               # count
                run.batch_in_epoch += 1
                n = batch_size(batch) or 0
                loop.samples += n
                run.window_steps += 1
                run.window_samples += n
                if loop.step % every == 0:                                   # log window
                    window = run.flush(window)
                if run.eval_due():                                           # evaluate
                    run.evaluate()
                done = loop.step == run.end_step or run.should_stop(stop)   # stop
                if run.checkpoint and not done and run.checkpoint.due(loop.step):
                    run.save(window, blocking=False)                         # checkpoint
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
    return loop.state


class _Run:
    """Everything of a `fit` run except its loop: set-up, the log window, evaluation,
    checkpoints and the end of the run (a context manager around the loop)."""

    def __init__(self, step_fn: Any, state: Any, loader: Iterable[Any], *, epochs: int | None,
                 max_steps: int | None, eval_fn: Any, eval_loader: Any, eval_every: int | None,
                 device: Any, precision: Any, compile: Any, callbacks: Sequence[Callback],
                 run_dir: Any, resume: Any, log: Logging | bool,
                 checkpoint: Checkpointing | None) -> None:
        # -- validate everything before the first step ------------------------------------
        if epochs is None and max_steps is None:
            raise ValueError("fit needs epochs or max_steps (or both); got neither. "
                             "HINT: fit(step, state, loader, epochs=10).")
        check_int("epochs", epochs, minimum=1, allow_none=True)
        check_int("max_steps", max_steps, minimum=1, allow_none=True)
        check_loader(loader, "loader")
        self.eval_steps, self.eval_in_epoch = _eval_every(eval_every, loader)
        if (eval_fn is None) != (eval_loader is None):
            raise ValueError("eval_fn and eval_loader go together: got "
                             f"eval_fn={'set' if eval_fn else None}, "
                             f"eval_loader={'set' if eval_loader is not None else None}.")
        if eval_loader is not None:
            check_loader(eval_loader, "eval_loader")
        for i, cb in enumerate(callbacks):
            if not isinstance(cb, Callback):
                raise TypeError(f"callbacks[{i}]: expected a functrain.Callback, "
                                f"got {type(cb).__name__}.")
        log = _logging(log)
        if checkpoint is not None and not isinstance(checkpoint, Checkpointing):
            raise TypeError(f"checkpoint: expected a functrain.Checkpointing or None, got "
                            f"{type(checkpoint).__name__}. HINT: "
                            "checkpoint=ft.Checkpointing(every=1000).")
        if resume == "auto" and run_dir is None:
            raise ValueError("resume='auto' needs run_dir: it looks for checkpoints in "
                             "run_dir/checkpoints. HINT: fit(..., run_dir='runs/exp1', "
                             "resume='auto').")
        check_finite = any(isinstance(cb, NonFiniteGuard) for cb in callbacks)
        self.runner = _training_runner(step_fn, device, precision, compile, check_finite)
        self.evaluator = Evaluator(eval_fn, self.runner) if eval_fn is not None else None
        self.eval_loader = eval_loader
        # -- the run's parts ----------------------------------------------------------------
        if run_dir is None and (log.loggers is None or checkpoint or resume):
            run_dir = os.path.join("runs", datetime.datetime.now().strftime("%Y%m%d-%H%M%S"))
        self.run_dir = None if run_dir is None else str(run_dir)
        self.checkpoint = checkpoint
        self.manager = None
        if checkpoint or resume:
            from .checkpoint import CheckpointManager

            self.manager = CheckpointManager(os.path.join(self.run_dir, "checkpoints"),
                                             keep=checkpoint.keep if checkpoint else None)
        self.loader, self.every = loader, log.every
        state, self.position = self._resume(state, resume)
        self.resumed = self.position is not None
        pos = self.position or LoopState()
        start_step = int(state.step) if hasattr(state, "step") else 0  # one sync, at start
        self.start_step = start_step
        self.run_start = pos.run_start if self.resumed else start_step
        self.end_step = None if max_steps is None else self.run_start + max_steps
        total = self.end_step
        n_batches = _len(loader)
        if epochs is not None and n_batches is not None:
            by_epochs = self.run_start + epochs * n_batches
            total = by_epochs if total is None else min(total, by_epochs)
        self.loop = Loop(state=state, step=start_step, epoch=pos.epoch, run_dir=self.run_dir,
                         callbacks=(*callbacks, *log.callbacks()), samples=pos.samples,
                         loggers=tuple(log.make_loggers(self.run_dir)), total_steps=total)
        for cb in self.loop.callbacks:
            if cb.state_key in pos.callbacks:
                cb.load_state_dict(pos.callbacks[cb.state_key])
        self.position = pos
        self.batch_in_epoch = pos.batch_in_epoch
        self.window_steps, self.window_samples = pos.window_steps, pos.window_samples
        self.saved_window = pos.window or None  # merged into the first step's window
        self.epoch_finished = False
        self.epoch_sums: dict[str, float] = {}  # step-weighted sums of the epoch's windows
        self.epoch_steps = 0
        self.evaluated_at: int | None = None
        self.ordered = hasattr(loader, "set_epoch")
        if pos.batch_in_epoch and not self.ordered:
            warnings.warn("resume: the loader has no set_epoch(epoch), so its order cannot be "
                          "replayed; skipping the first "
                          f"{pos.batch_in_epoch} batches of the epoch it yields. HINT: use "
                          "functrain.data.ArrayLoader for an exact resume.", stacklevel=3)
        hparams = {**(log.hparams or {}), "epochs": epochs, "max_steps": max_steps,
                   "log_every": log.every, "compile": self.runner.backend,
                   "device": str(self.runner.device), "precision": str(precision),
                   "start_step": start_step}
        for lg in self.loop.loggers:
            lg.log_hparams(hparams)
        for cb in self.loop.callbacks:
            cb.on_run_start(self.loop)
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
                       "Turn it off with log=ft.Logging(sanity_eval=0).")
            raise

    def _resume(self, state: Any, resume: Any) -> tuple[Any, LoopState | None]:
        """The state and loop position of the checkpoint ``resume`` names, if any."""
        if not resume:
            return state, None
        from . import checkpoint

        path = self.manager.latest() if resume == "auto" else resume
        if path is None:
            return state, None
        # A run under "16-mixed" saved a loss scale in extras: prepare `like` the same way.
        position = LoopState.from_meta(checkpoint.load_meta(path))
        like = self.runner.policy.prepare_state(state)
        return checkpoint.restore(path, like=like), position

    # -- the loop's parts ------------------------------------------------------------------
    def batches(self, epoch: int, skip: int) -> Iterator[Any]:
        """The epoch's batches, prefetched to an accelerator, the first ``skip`` skipped."""
        if self.ordered:
            self.loader.set_epoch(epoch)  # type: ignore[attr-defined]
        runner = self.runner
        batches = iter(prefetch(self.loader, runner.place_batch)
                       if runner.device.type in ("cuda", "xla") else self.loader)
        if skip:  # resuming mid-epoch: the batches already trained on
            next(itertools.islice(batches, skip - 1, None), None)
        return batches

    def flush(self, window: MetricWindow | None) -> MetricWindow | None:
        """Read the metric window, log it, tell the callbacks; start the next window."""
        if window is None:
            return None
        if self.saved_window is not None:  # the window a resumed run stopped in
            window, self.saved_window = window.merge_saved(self.saved_window), None
        values = window.compute()
        window = window.reset()
        loop = self.loop
        loop.nonfinite_step = int(values.pop(NONFINITE, 0) or 0)
        values = {f"train/{k}": v for k, v in values.items()}
        for k, v in values.items():
            self.epoch_sums[k] = self.epoch_sums.get(k, 0.0) + v * self.window_steps
        self.epoch_steps += self.window_steps
        if values:
            loop.log(values)
        for cb in loop.callbacks:
            cb.on_log(loop, values)
        self.window_steps = self.window_samples = 0
        return window

    def eval_due(self) -> bool:
        """Whether an evaluation is due after this step (``eval_every`` steps, or a fraction
        of an epoch counted from the epoch's start)."""
        if self.eval_steps:
            return self.loop.step % self.eval_steps == 0
        return bool(self.eval_in_epoch) and self.batch_in_epoch % self.eval_in_epoch == 0

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
        values = {f"val/{k}": v for k, v in self.evaluator(loop.state, self.eval_loader).items()}
        loop.log(values)
        for cb in loop.callbacks:
            cb.on_eval(loop, values)

    def should_stop(self, stop: StopSignal) -> bool:
        """Whether a signal or a callback asked to stop (recording why)."""
        loop = self.loop
        if stop.reason or loop.stop_reason:
            loop.stop_reason = loop.stop_reason or stop.reason
            return True
        return False

    def save(self, window: MetricWindow | None, blocking: bool) -> None:
        """Save the state and the loop's position as the checkpoint of the current step."""
        loop = self.loop
        done = self.epoch_finished
        if window is not None and self.saved_window is not None:
            window, self.saved_window = window.merge_saved(self.saved_window), None
        tensors = window.tensors() if window is not None else self.saved_window or ()
        position = LoopState(
            epoch=loop.epoch + done, batch_in_epoch=0 if done else self.batch_in_epoch,
            samples=loop.samples, run_start=self.run_start, window_steps=self.window_steps,
            window_samples=self.window_samples,
            window=tuple(tensors),
            callbacks=loop.callback_states())
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
        if self.checkpoint and not idle_resume:  # the end of the run, or a stop
            self.save(window, blocking=True)

    def __enter__(self) -> _Run:
        return self

    def __exit__(self, kind: Any, error: Any, tb: Any) -> bool:
        loop = self.loop
        if kind is KeyboardInterrupt:
            loop.stop_reason = "interrupted (KeyboardInterrupt)"
        elif error is not None:
            loop.error = error
        if is_donated(loop.state):  # interrupted between donation and hand-back
            loop.state = self.runner.last_state()
        loop.compiles = self.runner.compiles
        try:
            if self.manager is not None:
                self.manager.wait()
        finally:
            for cb in loop.callbacks:
                cb.on_run_end(loop)
            for lg in loop.loggers:
                lg.close()
        return kind is KeyboardInterrupt


def _logging(log: Any) -> Logging:
    if log is True:
        return Logging()
    if log is False:
        return Logging.quiet()
    if not isinstance(log, Logging):
        raise TypeError(f"log: expected True, False or a functrain.Logging, got "
                        f"{type(log).__name__}. HINT: log=ft.Logging(every=10).")
    return log


def _training_runner(step_fn: Any, device: Any, precision: Any, compile: Any,
                     check_finite: bool) -> CompiledStep:
    if isinstance(step_fn, CompiledStep):
        given = [name for name, value, default in (("device", device, "auto"),
                 ("precision", precision, "32"), ("compile", compile, "auto"))
                 if value != default]
        if given:
            raise ValueError(f"{', '.join(given)}: set them on the runner passed as step_fn, "
                             "not on fit. HINT: ft.compile_step(step, device=..., precision="
                             "..., compile=...).")
        if check_finite and not step_fn.check_finite:
            raise ValueError("callbacks: a NonFiniteGuard needs a runner that checks each step "
                             "for inf/NaN. HINT: ft.compile_step(step, check_finite=True).")
        return step_fn
    if not callable(step_fn):
        raise TypeError(f"step_fn: expected a callable step_fn(state, batch) -> (state, "
                        f"metrics), got {type(step_fn).__name__}.")
    policy = precision if isinstance(precision, Policy) else Policy.from_name(precision)
    return runner_for(step_fn, compile=compile, device=device, donate=True, precision=policy,
                      check_finite=check_finite)


def _eval_every(eval_every: Any, loader: Any) -> tuple[int | None, int | None]:
    """``(every this many steps, every this many batches of an epoch)`` from ``eval_every``:
    an int is steps; a float in (0, 1) is a fraction of an epoch (``len(loader)``)."""
    if isinstance(eval_every, float):
        check_number("eval_every", eval_every, low=0.0, high=1.0, low_open=True,
                     high_open=True, hint="an int is a number of steps; a float in (0, 1) a "
                     "fraction of an epoch, e.g. 0.25 evaluates four times per epoch.")
        n = _len(loader)
        if n is None:
            raise TypeError(f"eval_every: a fraction of an epoch ({eval_every!r}) needs a loader "
                            "with a length. HINT: pass a number of steps (an int).")
        return None, max(1, round(eval_every * n))
    return check_int("eval_every", eval_every, minimum=1, allow_none=True,
                     hint="an int is a number of steps; a float in (0, 1) a fraction of an "
                     "epoch."), None


def _len(loader: Any) -> int | None:
    try:
        return len(loader)
    except TypeError:
        return None
