"""`fit` and `evaluate`: the training loop around the compiled-step runner."""

from __future__ import annotations

import datetime
import itertools
import math
import os
import signal
import threading
import time
import warnings
import weakref
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch

from . import _rng_state
from . import loggers as _loggers
from . import optim as _optim
from . import tree as _tree
from ._callbacks import Callback, Loop
from ._donation import is_donated
from ._errors import describe
from ._loader_state import LoaderOrder
from ._progress import ProgressBar, format_summary
from ._runner import NONFINITE, NONFINITE_PARAMS, CompiledStep, _leading, prefetch
from ._state import TrainState
from .precision import Policy

__all__ = ["evaluate", "fit"]


def _check_positive_int(value: Any, name: str, allow_none: bool = True) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name}: expected a positive int{' or None' if allow_none else ''}, "
                         f"got {value!r}.")


def _check_loader(loader: Any, name: str) -> None:
    if not isinstance(loader, Iterable):
        raise TypeError(f"{name}: expected an iterable of batches (a DataLoader, a list...), "
                        f"got {type(loader).__name__}.")
    try:
        n = len(loader)  # type: ignore[arg-type]
    except TypeError:
        return
    if n == 0:
        raise ValueError(f"{name} is empty: it yields no batches. HINT: check the dataset's "
                         "size and the batch size (drop_last=True drops a lone partial batch).")


def _eval_step(eval_fn: Callable[[Any, Any], Any]) -> Callable[[Any, Any], tuple[Any, Any]]:
    def step(state: Any, batch: Any) -> tuple[Any, Any]:
        return state, eval_fn(state, batch)

    return step


# Runners built by fit/evaluate, per step function and options, so that calling fit again
# with the same step (more epochs, a notebook re-run, evaluate after fit) reuses the compiled
# graph instead of compiling again. Entries go away with their function.
_RUNNERS: weakref.WeakKeyDictionary[Any, dict[tuple[Any, ...], CompiledStep]] = (
    weakref.WeakKeyDictionary())


def _runner_for(fn: Callable[..., Any], *, compile: Any, device: Any, donate: bool,
                on_recompile: str, precision: Any = "32", check_finite: bool = False,
                wrap: Callable[..., Any] | None = None,
                devices: int | str | None = None) -> CompiledStep:
    key = (str(compile), str(device), donate, on_recompile, str(precision), check_finite,
           wrap is not None, str(devices))
    try:
        per_fn = _RUNNERS.setdefault(fn, {})
    except TypeError:  # not weak-referenceable: no reuse
        per_fn = {}
    runner = per_fn.get(key)
    if runner is None:
        runner = CompiledStep(wrap(fn) if wrap else fn, compile=compile, device=device,
                              donate=donate, on_recompile=on_recompile, return_metrics=False,
                              precision=precision, check_finite=check_finite,
                              devices=devices, _train=wrap is None)
        per_fn[key] = runner
    runner.reset_metrics()
    runner.start_run()
    return runner


class _Evaluator:
    """Runs ``eval_fn`` compiled over a loader, accumulating its metrics on the device."""

    def __init__(self, eval_fn: Callable[[Any, Any], Any], compile: Any, device: Any,
                 on_recompile: str, precision: Any = "32",
                 devices: int | str | None = None) -> None:
        if not callable(eval_fn):
            raise TypeError(f"eval_fn: expected a callable eval_fn(state, batch) -> metrics, "
                            f"got {type(eval_fn).__name__}.")
        self.runner = _runner_for(eval_fn, compile=compile, device=device, donate=False,
                                  on_recompile=on_recompile, precision=precision,
                                  wrap=_eval_step, devices=devices)

    def __call__(self, state: Any, loader: Iterable[Any]) -> dict[str, float]:
        self.runner.reset_metrics()
        n = 0
        for batch in loader:
            state, _ = self.runner(state, batch)
            n += 1
        if n == 0:
            raise ValueError("eval_loader is empty: it yielded no batches.")
        return self.runner.read_metrics()


def evaluate(
    eval_fn: Callable[[Any, Any], Any],
    state: Any,
    loader: Iterable[Any],
    *,
    device: str | torch.device = "auto",
    compile: str | bool = "auto",
    precision: Any = "32",
    devices: int | str | None = None,
) -> dict[str, float]:
    """Run ``eval_fn(state, batch) -> metrics`` over ``loader``; return the metrics' values.

    Metrics accumulate on the device (a bare 0-d tensor is a mean over batches; use
    ``functrain.metrics.Mean.from_value(v, weight=batch_size)`` or ``Accuracy`` for exact
    per-example averages) and are read once at the end. ``state`` is not consumed.

    Args:
        eval_fn: the evaluation step.
        state: the state to evaluate.
        loader: an iterable of batches.
        device: where to run (see `functrain.compile_step`).
        compile: the backend (see `functrain.compile_step`).
        precision: the precision policy (see `fit`).
        devices: XLA only: split batches across all devices (see `functrain.compile_step`).

    Returns:
        ``{name: float}``.

    Example:
        >>> import torch, functrain as ft
        >>> model = torch.nn.Linear(2, 1)
        >>> torch.nn.init.zeros_(model.bias)
        Parameter containing:
        tensor([0.], requires_grad=True)
        >>> state = ft.TrainState.create(model, ft.optim.sgd(0.1))
        >>> def eval_fn(state, batch):
        ...     x, y = batch
        ...     out, _ = state.apply(x)
        ...     return {"mse": ((out - y) ** 2).mean()}
        >>> data = [(torch.zeros(4, 2), torch.zeros(4, 1))] * 3
        >>> ft.evaluate(eval_fn, state, data, compile="eager")
        {'mse': 0.0}
    """
    _check_loader(loader, "loader")
    return _Evaluator(eval_fn, compile, device, "warn", precision, devices)(state, loader)


def fit(
    step_fn: Callable[[Any, Any], tuple[Any, Any]],
    state: Any,
    loader: Iterable[Any],
    *,
    epochs: int | None = None,
    max_steps: int | None = None,
    eval_fn: Callable[[Any, Any], Any] | None = None,
    eval_loader: Iterable[Any] | None = None,
    eval_every: int | None = None,
    eval_every_epochs: int = 1,
    device: str | torch.device = "auto",
    devices: int | str | None = None,
    precision: Any = "32",
    compile: str | bool = "auto",
    callbacks: Sequence[Callback] = (),
    loggers: Sequence[Any] | None | bool = None,
    log_every: int = 50,
    progress: bool | None = None,
    run_dir: str | os.PathLike[str] | None = None,
    on_recompile: str = "warn",
    summary: bool = True,
    checkpoint_every: int | None = None,
    keep: int | None = 3,
    resume: str | os.PathLike[str] | None = None,
    hparams: dict[str, Any] | None = None,
    accumulate: int = 1,
    on_nonfinite: str | None = None,
    exit_on_sigterm: bool = True,
) -> Any:
    """Train: run ``step_fn`` over ``loader`` through the compiled-step runner.

    The loop is the runner (`functrain.compile_step`) plus what a run needs around it: metric
    windows read once every ``log_every`` steps (one host transfer per window), logs (JSONL
    and CSV under ``run_dir``, TensorBoard when installed), a progress bar, evaluation,
    callbacks, a clean stop on Ctrl-C / SIGTERM at the next step boundary, and an end-of-run
    summary.

    Args:
        step_fn: ``step_fn(state, batch) -> (state, metrics)``, pure; metrics a dict of 0-d
            tensors (means over the window) or `functrain.metrics` values.
        state: the initial state (usually a `functrain.TrainState`). It is donated: use the
            returned state afterwards.
        loader: an iterable of batches (tensors, or tuples/dicts of tensors); iterated once
            per epoch.
        epochs: how many passes over ``loader``.
        max_steps: stop after this many steps in total (counting from ``state.step``), even
            mid-epoch. At least one of ``epochs`` and ``max_steps`` is required.
        eval_fn: ``eval_fn(state, batch) -> metrics``, run over ``eval_loader``.
        eval_loader: the evaluation batches; required with ``eval_fn``.
        eval_every: evaluate every this many steps; ``None``: every ``eval_every_epochs``
            epochs. Training always ends with an evaluation when ``eval_fn`` is given.
        eval_every_epochs: with ``eval_every=None``, evaluate at the end of every this many
            epochs (Lightning's ``check_val_every_n_epoch``).
        device: ``"auto"`` (CUDA if available, else CPU), ``"cpu"``, ``"cuda"``, ``"xla"``
            or ``"tpu"`` (torch_xla; see the README, "Run on TPU"), ...
        devices: on XLA, ``"all"`` trains data parallel across all of torch_xla's devices:
            each batch is split along its first dimension with SPMD, the state replicated
            (see `functrain.compile_step`). ``None``: one device.
        precision: ``"32"``, ``"bf16-mixed"`` (float32 params, bfloat16 compute under
            autocast), ``"16-mixed"`` (float16 compute with dynamic loss scaling: write the
            step with `functrain.precision.value_and_grad` and
            `functrain.precision.apply_gradients`), ``"bf16-true"`` (params and compute in
            bfloat16), or a `functrain.precision.Policy`.
        compile: ``"auto"``, ``"inductor"``, ``"cudagraphs"``, ``"openxla"``, ``"eager"``
            (see `functrain.compile_step`).
        callbacks: `functrain.Callback` objects.
        loggers: ``None``: JSONL + CSV (+ TensorBoard when installed) under ``run_dir``;
            ``False`` or ``[]``: none; or a list of `functrain.loggers.Logger` objects.
        log_every: read, log and display the training metrics every this many steps (and at
            the end of each epoch).
        progress: show a progress bar; ``None``: only when stderr is a terminal.
        run_dir: where logs go; default ``runs/<date>-<time>`` (only created if logging).
        on_recompile: ``"warn"``, ``"raise"`` or ``"ignore"`` a recompilation after warm-up.
        summary: print the end-of-run summary.
        checkpoint_every: save a checkpoint every this many steps (asynchronously: the loop
            waits only for a host copy), at the end of the run, and on SIGTERM/SIGINT, under
            ``run_dir/checkpoints/step_<step>/`` (see `functrain.checkpoint`). A checkpoint
            holds the state, the position in the data, the metric window and the callbacks'
            state, so a resumed run continues exactly where it stopped.
        keep: how many periodic checkpoints to keep (``None``: all).
        resume: ``"auto"``: continue from the newest intact checkpoint in
            ``run_dir/checkpoints`` if there is one (else start fresh; if every one is
            corrupt, raise `functrain.checkpoint.CheckpointError` listing them); a path:
            continue from that checkpoint, moving newer ones there aside (a rollback).
            ``None`` with checkpoints in ``run_dir/checkpoints``: start afresh and move them
            aside. ``epochs`` and ``max_steps`` then count from the start of the original
            run. The resume is exact (see the README, "Failure and resume guarantees") with
            `functrain.data.ArrayLoader` or a loader with ``set_epoch``, a list of batches,
            a ``DataLoader`` over a map-style dataset with its default sampler, or torchdata's
            ``StatefulDataLoader``; the global random generators are restored too. Otherwise
            every resume warns why it may not be.
        hparams: the run's hyperparameters, recorded by every logger at the start (with
            fit's own settings).
        accumulate: apply the optimizer once every this many steps, to the mean of their
            gradients (`functrain.optim.MultiSteps` around ``state.tx``, so the step itself
            is unchanged; with mean losses this equals one step on the concatenated batches).
            ``state.step``, ``max_steps`` and ``log_every`` count batches. Windows run on
            across epoch boundaries, so every update averages exactly ``accumulate`` batches;
            gradients of a last, incomplete window at the end of training are not applied.
            (Lightning instead steps on the partial window at an epoch's end.) The returned
            state has the original optimizer back.
        on_nonfinite: ``None`` (no check), ``"skip"``, ``"stop"`` or ``"raise"``. With a
            check, every step tests its metrics and the new params for inf/NaN on the device
            and records the first bad step in the metric window, read with it (no extra host
            sync). ``"skip"`` also wraps the optimizer in `functrain.optim.apply_if_finite`, so
            a step with non-finite gradients leaves params and optimizer state unchanged (a
            warning reports it); ``"stop"`` ends training at the next log window;
            ``"raise"`` raises ``FloatingPointError`` naming the step and the first
            non-finite metric or param leaf. Checkpoints already written are kept.

        exit_on_sigterm: after a SIGTERM (a scheduler's pre-emption), stop at the next step
            boundary, write the checkpoint (with ``checkpoint_every``), close the logs, and
            then exit the process with status 143 (``SystemExit(143)``), so that the stop is
            not taken for success. ``False``: return the state instead.

    Returns:
        The final state (or, after Ctrl-C / a callback's stop / a non-finite guard's stop /
        a SIGTERM with ``exit_on_sigterm=False``, the last complete step's state). A
        `functrain.TrainState` says why it was returned in ``state.stop_reason``: ``None``
        when the run went to its end, else the reason (e.g. ``"received SIGINT"``).

    Raises:
        ValueError / TypeError: for bad arguments, naming the argument, before any step.
        KeyboardInterrupt: at a second Ctrl-C, at once (the first one stops at the next step
            boundary); checkpoints already written are intact.
        SystemExit: with status 143 after a SIGTERM, once the checkpoint is written (see
            ``exit_on_sigterm``).

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
        >>> state = ft.fit(step, state, data, epochs=2, compile="eager", loggers=False,
        ...                progress=False, summary=False)
        >>> int(state.step)
        8
    """
    # -- validate everything before the first step ----------------------------------------
    if not callable(step_fn):
        raise TypeError(f"step_fn: expected a callable step_fn(state, batch) -> (state, "
                        f"metrics), got {type(step_fn).__name__}.")
    if epochs is None and max_steps is None:
        raise ValueError("fit needs epochs or max_steps (or both); got neither. "
                         "HINT: fit(step, state, loader, epochs=10).")
    _check_positive_int(epochs, "epochs")
    _check_positive_int(max_steps, "max_steps")
    _check_positive_int(log_every, "log_every", allow_none=False)
    _check_positive_int(eval_every, "eval_every")
    _check_positive_int(eval_every_epochs, "eval_every_epochs", allow_none=False)
    _check_positive_int(accumulate, "accumulate", allow_none=False)
    if on_nonfinite not in (None, "skip", "stop", "raise"):
        raise ValueError("on_nonfinite: expected None, 'skip', 'stop' or 'raise', "
                         f"got {on_nonfinite!r}.")
    if not isinstance(exit_on_sigterm, bool):
        raise TypeError(f"exit_on_sigterm: expected a bool, got {describe(exit_on_sigterm)}.")
    if hparams is not None and not isinstance(hparams, dict):
        raise TypeError(f"hparams: expected a dict, got {type(hparams).__name__}.")
    policy = precision if isinstance(precision, Policy) else Policy.from_name(precision)
    _check_loader(loader, "loader")
    if (eval_fn is None) != (eval_loader is None):
        raise ValueError("eval_fn and eval_loader go together: got "
                         f"eval_fn={'set' if eval_fn else None}, "
                         f"eval_loader={'set' if eval_loader is not None else None}.")
    if eval_loader is not None:
        _check_loader(eval_loader, "eval_loader")
    if isinstance(callbacks, Callback) or not isinstance(callbacks, (list, tuple)):
        raise TypeError(f"callbacks: expected a list of functrain.Callback objects, got "
                        f"{describe(callbacks)}. HINT: callbacks=[cb] for one.")
    for i, cb in enumerate(callbacks):
        if not isinstance(cb, Callback):
            raise TypeError(f"callbacks[{i}]: expected a functrain.Callback, "
                            f"got {type(cb).__name__}.")
    _check_positive_int(checkpoint_every, "checkpoint_every")
    _check_positive_int(keep, "keep")
    if eval_fn is None:
        if eval_every is not None:
            raise ValueError(f"eval_every={eval_every}: expected eval_fn and eval_loader to "
                             "evaluate with, got neither. HINT: pass eval_fn=..., "
                             "eval_loader=..., or drop eval_every.")
        for i, cb in enumerate(callbacks):
            monitor = getattr(cb, "monitor", None)
            if isinstance(monitor, str) and monitor.startswith("val/"):
                raise ValueError(
                    f"callbacks[{i}]: {type(cb).__name__} monitors {monitor!r}, expected an "
                    "evaluation to produce it, got no eval_fn. HINT: pass eval_fn and "
                    "eval_loader, or monitor a training metric ('train/loss').")
    if run_dir is not None and (not isinstance(run_dir, (str, os.PathLike))
                                or not os.fspath(run_dir)):
        raise ValueError(f"run_dir: expected a directory path or None, got "
                         f"{describe(run_dir)}. HINT: run_dir='runs/exp1'; None picks "
                         "runs/<date>-<time>.")
    if resume is not None and (isinstance(resume, bool) or not (
            resume == "auto" or isinstance(resume, (str, os.PathLike)))):
        raise TypeError(f"resume: expected 'auto', a checkpoint path or None, got "
                        f"{describe(resume)}. HINT: resume='auto' continues from the newest "
                        "intact checkpoint in run_dir/checkpoints.")
    if loggers is not None and not isinstance(loggers, bool):
        if not isinstance(loggers, (list, tuple)):
            raise TypeError(f"loggers: expected None, False or a list of loggers, got "
                            f"{describe(loggers)}. HINT: loggers=[ft.loggers.CSVLogger(...)].")
        for i, lg in enumerate(loggers):
            if not all(callable(getattr(lg, m, None))
                       for m in ("log_metrics", "log_hparams", "close")):
                raise TypeError(f"loggers[{i}]: expected a functrain.loggers.Logger (with "
                                f"log_metrics, log_hparams and close), got {describe(lg)}. "
                                "HINT: e.g. functrain.loggers.JSONLLogger('runs/x/m.jsonl'); "
                                "loggers=None gives the default ones.")
    if resume == "auto" and run_dir is None:
        raise ValueError("resume='auto' needs run_dir: it looks for checkpoints in "
                         "run_dir/checkpoints. HINT: fit(..., run_dir='runs/exp1', "
                         "resume='auto').")

    runner = _runner_for(step_fn, compile=compile, device=device, donate=True,
                         on_recompile=on_recompile, precision=policy,
                         check_finite=on_nonfinite is not None, devices=devices)
    evaluator = (_Evaluator(eval_fn, compile, device, on_recompile, policy, devices)
                 if eval_fn is not None else None)
    default_logs = loggers is None or loggers is True
    if run_dir is None and (default_logs or checkpoint_every or resume):
        run_dir = os.path.join("runs", datetime.datetime.now().strftime("%Y%m%d-%H%M%S"))
    manager = None
    if checkpoint_every or resume:
        from .checkpoint import CheckpointManager

        manager = CheckpointManager(os.path.join(str(run_dir), "checkpoints"), keep=keep)
    tx = getattr(state, "tx", None)
    if on_nonfinite == "skip":
        state = _wrap_tx(state, lambda inner: _optim.apply_if_finite(inner, 2**31 - 1))
    if accumulate > 1:
        state = _wrap_tx(state, lambda inner: _optim.MultiSteps(inner, accumulate))
    state, meta = _resume(state, resume, manager, policy)
    start_step = int(state.step) if hasattr(state, "step") else 0  # one sync, at start
    try:
        steps_per_epoch: int | None = len(loader)  # type: ignore[arg-type]
    except TypeError:
        steps_per_epoch = None
    total = max_steps
    if epochs is not None and steps_per_epoch is not None:
        total = min(total or math.inf, epochs * steps_per_epoch) if total else (
            epochs * steps_per_epoch)
    bar = ProgressBar(total=None if total is None else int(total), enabled=progress)
    loop = Loop(state=state, step=start_step, epoch=meta.get("epoch", 0),
                run_dir=None if run_dir is None else str(run_dir), callbacks=tuple(callbacks),
                samples=meta.get("samples", 0))
    best: dict[str, float] = dict(meta.get("best", {}))
    if meta:
        runner.load_metric_window(meta["window"])
        states = meta.get("callbacks", {})
        for cb in callbacks:
            if cb.state_key in states:
                cb.load_state_dict(states[cb.state_key])
    t_start = time.perf_counter()

    def log(values: dict[str, float], step: int) -> None:
        loop.metrics.update(values)
        for lg in loggers:
            lg.log_metrics(values, step)

    loop._log = log

    evaluated_at = [None]

    def run_eval() -> None:
        assert evaluator is not None and eval_loader is not None
        evaluated_at[0] = loop.step
        values = {f"val/{k}": v for k, v in evaluator(loop.state, eval_loader).items()}
        for k, v in values.items():
            if math.isfinite(v):
                better = max if _higher_is_better(k) else min
                best[k] = better(best.get(k, v), v)
        log(values, loop.step)
        bar.write(" ".join(f"{k}={v:.4g}" for k, v in values.items()) + f" (step {loop.step})")
        for cb in callbacks:
            cb.on_eval(loop, values)

    def flush_train(window_steps: int, window_samples: int) -> None:
        values = runner.read_metrics()
        bad_step = int(values.pop(NONFINITE, 0) or 0)
        params_step = int(values.pop(NONFINITE_PARAMS, 0) or 0)
        values = {f"train/{k}": v for k, v in values.items()}
        if bad_step:
            nonfinite(bad_step, params_step, values)
        if values:
            log(values, loop.step)
        bar.update(window_steps, {k.removeprefix("train/"): v for k, v in values.items()},
                   samples=window_samples, epoch=loop.epoch)
        for cb in callbacks:
            cb.on_log(loop, values)

    unsaveable = [False]  # a guard saw a step whose state must not become a checkpoint
    skips_reported = [0]

    def nonfinite(bad_step: int, params_step: int, values: dict[str, float]) -> None:
        what = next((f"metric {k} = {v}" for k, v in values.items() if not math.isfinite(v)),
                    None)
        if what is None:
            what = next((f"{p} holds inf/NaN" for p, x in _tree.leaves_with_path(
                getattr(loop.state, "params", {}), "state.params")
                if not bool(torch.isfinite(x).all())), "a non-finite value")
        msg = f"non-finite values at step {bad_step}: {what}"
        if on_nonfinite == "raise":
            unsaveable[0] = True
            raise FloatingPointError(msg + ". HINT: lower the learning rate, clip gradients, "
                                     "or pass on_nonfinite='skip' to skip such steps.")
        if on_nonfinite == "stop":
            unsaveable[0] = True
            loop.request_stop(msg)
            return
        skipped = _skipped_updates(getattr(loop.state, "opt_state", None))
        new, skips_reported[0] = skipped - skips_reported[0], skipped
        if params_step:  # despite the skips (e.g. a finite update that overflowed)
            unsaveable[0] = True
            warnings.warn(f"functrain: the params became non-finite at step {params_step} "
                          f"({what}); no more checkpoints are written in this run. HINT: "
                          "lower the learning rate or clip gradients.", stacklevel=3)
        elif new:
            warnings.warn(f"functrain: skipped the update of a step with {msg} ({new} "
                          "update(s) with non-finite gradients skipped in this log window; "
                          "params and optimizer state were kept).", stacklevel=3)
        else:
            warnings.warn(f"functrain: {msg}; the update was applied: its gradients were "
                          "finite (on_nonfinite='skip' skips only updates with non-finite "
                          "gradients).", stacklevel=3)

    def saveable() -> bool:
        """With a guard on: whether the state may be checkpointed (one small host read)."""
        if on_nonfinite is None or unsaveable[0]:
            return not unsaveable[0]
        first, params = runner.nonfinite_steps()
        return not (params if on_nonfinite == "skip" else first)

    stop = _StopSignal(exit_on_sigterm)
    # Created last before the loop, and closed if anything fails before it starts: a logger
    # may own a thread (TensorBoard's writer).
    loggers = (_loggers.default_loggers(run_dir) if default_logs
               else [] if loggers is False else list(loggers))
    try:
        for lg in loggers:
            lg.log_hparams({**(hparams or {}), "epochs": epochs, "max_steps": max_steps,
                            "log_every": log_every, "compile": runner.backend,
                            "device": str(runner.device), "precision": str(precision),
                            "start_step": start_step})
        for cb in callbacks:
            cb.on_run_start(loop)
    except BaseException:
        for lg in loggers:
            lg.close()
        raise
    # max_steps counts from the start of the original run, also when resuming.
    run_start = meta.get("run_start", start_step)
    end_step = None if max_steps is None else run_start + max_steps
    if meta and "run_start" not in meta:  # written before run_start was recorded
        end_step = meta.get("end_step")
    window_steps, window_samples = meta.get("window_steps", 0), meta.get("window_samples", 0)
    done = end_step is not None and loop.step >= end_step  # e.g. resuming a finished run
    skip = meta.get("batch_in_epoch", 0)
    order = LoaderOrder(loader, seed=meta.get("data_seed", torch.initial_seed()))
    resume_rng, loader_state = meta.get("rng"), meta.get("loader")
    if meta and not done:
        _warn_if_inexact(order, skip, resume_rng)

    def save_checkpoint(blocking: bool, epoch_done: bool = False) -> None:
        assert manager is not None
        manager.save(loop.step, loop.state, {
            "epoch": loop.epoch + epoch_done, "batch_in_epoch": 0 if epoch_done else n_batches,
            "samples": loop.samples, "run_start": run_start, "end_step": end_step,
            "best": best, "callbacks": loop.callback_states(),
            "window": runner.metric_window(), "window_steps": window_steps,
            "window_samples": window_samples, "data_seed": order.seed,
            "rng": _rng_state.capture(), "loader": order.state_dict()}, blocking=blocking)

    n_batches, epoch_finished = skip, False  # the position, should no epoch start
    with stop:
        try:
            epoch = loop.epoch
            while not done and (epochs is None or epoch < epochs):
                loop.epoch = epoch
                order.start_epoch(epoch)
                n_batches, skip = skip, 0
                completed = epoch_finished = False
                if resume_rng is not None and not n_batches:
                    # at an epoch boundary: as the straight run was before iter(loader)
                    _restore_rng(resume_rng)
                    resume_rng = None
                if loader_state is not None:  # a stateful loader continues by itself
                    order.load_state_dict(loader_state)
                    loader_state = None
                # A stateful loader's state must not run ahead of the step (no prefetch).
                batches = iter(prefetch(loader, runner.place_batch)
                               if runner.device.type in ("cuda", "xla")
                               and order.kind != "stateful" else loader)
                if n_batches and order.skips_batches:  # resuming mid-epoch: already trained on
                    next(itertools.islice(batches, n_batches - 1, None), None)
                if resume_rng is not None:  # mid-epoch: as the straight run was at the save
                    _restore_rng(resume_rng)
                    resume_rng = None
                for batch in batches:
                    n_batches += 1
                    loop.state, _ = runner(loop.state, batch)
                    loop.step += 1
                    n = _leading(batch) or 0
                    loop.samples += n
                    window_steps += 1
                    window_samples += n
                    if loop.step % log_every == 0:
                        flush_train(window_steps, window_samples)
                        window_steps = window_samples = 0
                    if evaluator is not None and eval_every and loop.step % eval_every == 0:
                        run_eval()
                    if end_step is not None and loop.step >= end_step:
                        done = True
                    if stop.reason or loop.stop_reason:
                        loop.stop_reason = loop.stop_reason or stop.reason
                        done = True
                    if (checkpoint_every and loop.step % checkpoint_every == 0
                            and not done):
                        if saveable():
                            save_checkpoint(blocking=False)
                        else:  # handle it now (raise / stop / warn), and write nothing
                            flush_train(window_steps, window_samples)
                            window_steps = window_samples = 0
                            unsaveable[0] = unsaveable[0] or on_nonfinite != "skip"
                            done = done or bool(loop.stop_reason)
                    if done:
                        break
                else:
                    completed = True  # every batch of the epoch ran
                if n_batches == 0:
                    raise ValueError(f"loader yielded no batches in epoch {epoch}. HINT: an "
                                     "iterator is exhausted after one pass; pass a re-iterable "
                                     "(a DataLoader or a list).")
                if window_steps:
                    flush_train(window_steps, window_samples)
                    window_steps = window_samples = 0
                epoch += 1
                if (evaluator is not None and eval_every is None and not done
                        and epoch % eval_every_epochs == 0):
                    run_eval()
                epoch_finished = completed  # its end-of-epoch work is done too
                if stop.reason or loop.stop_reason:  # a stop asked at the epoch's end
                    loop.stop_reason = loop.stop_reason or stop.reason
                    done = True
            # A resumed run that had nothing left to do neither evaluates again nor rewrites
            # the checkpoint it started from.
            idle_resume = bool(meta) and loop.step == start_step
            if (evaluator is not None and not loop.stop_reason
                    and evaluated_at[0] != loop.step and not idle_resume):
                run_eval()
            if checkpoint_every and not idle_resume and saveable():  # the end, or a stop
                save_checkpoint(blocking=True, epoch_done=epoch_finished)
        except KeyboardInterrupt as e:
            if stop.interrupted:  # a second Ctrl-C: to the caller, now (checkpoints kept)
                loop.stop_reason = "interrupted (a second Ctrl-C)"
                loop.error = e
                raise
            loop.stop_reason = "interrupted (KeyboardInterrupt)"
        except BaseException as e:
            loop.error = e
            raise
        finally:
            order.close()
            if is_donated(loop.state):  # interrupted between donation and hand-back
                loop.state = runner._checked_state
            if manager is not None:
                manager.wait()
            for cb in callbacks:
                cb.on_run_end(loop)
            for lg in loggers:
                lg.close()
            bar.close()
    wall = time.perf_counter() - t_start
    if summary:
        last = {k: v for k, v in loop.metrics.items()}
        report = {"steps": loop.step - start_step, "epochs": loop.epoch + 1,
                  "samples": loop.samples,
                  "wall_time": wall,
                  "samples_per_s": loop.samples / wall if wall > 0 else 0.0,
                  "last": last, "best": best}
        if loop.stop_reason:
            report["stopped"] = loop.stop_reason
        if runner.compiles:
            report["compiles"] = runner.compiles
        print(format_summary(report))
    if stop.terminated and exit_on_sigterm:
        # Pre-empted: the checkpoint (if any) is written and the logs closed. Exit as a
        # process killed by SIGTERM reports it (128 + 15), so a scheduler can tell this run
        # from a finished one.
        raise SystemExit(128 + signal.SIGTERM)
    opt_state = getattr(loop.state, "opt_state", None)
    for _ in range((accumulate > 1) + (on_nonfinite == "skip")):
        opt_state = opt_state.inner_state if hasattr(opt_state, "inner_state") else (
            opt_state.inner_opt_state)
    if opt_state is not getattr(loop.state, "opt_state", None):
        # hand back the optimizer the caller gave (a partial accumulation window goes)
        loop.state = loop.state.replace(tx=tx, opt_state=opt_state)
    if isinstance(loop.state, TrainState):  # says why it stopped (None: ran to its end)
        object.__setattr__(loop.state, "stop_reason", loop.stop_reason)
    return loop.state


def _wrap_tx(state: Any, wrap: Callable[[Any], Any]) -> Any:
    """``state`` with its optimizer wrapped (MultiSteps, apply_if_finite), same inner state."""
    if getattr(state, "tx", None) is None:
        raise ValueError("accumulate / on_nonfinite='skip' need a TrainState with an "
                         "optimizer (state.tx). HINT: TrainState.create(module, optimizer).")
    wrapped = wrap(state.tx)
    fresh = wrapped.init(state.params)
    inner = "inner_opt_state" if hasattr(fresh, "inner_opt_state") else "inner_state"
    return state.replace(tx=wrapped, opt_state=fresh._replace(**{inner: state.opt_state}))


def _resume(state: Any, resume: Any, manager: Any, policy: Policy) -> tuple[Any, dict]:
    """Restore ``state`` and the loop's meta from the checkpoint ``resume`` names."""
    if not resume:
        if manager is not None and manager.all():
            aside = manager.set_aside(-1, "a new run started here with resume=None")
            warnings.warn(f"fit: {str(manager.directory)!r} held checkpoints of an earlier run; "
                          "this run starts afresh (resume=None), so they were moved, untouched,"
                          f" to {str(aside)!r}. HINT: resume='auto' continues a run.",
                          stacklevel=3)
        return state, {}
    from . import checkpoint

    # Every checkpoint corrupt: refuse (listing them) rather than start afresh over them.
    path = manager.latest(strict=True) if resume == "auto" else resume
    if path is None:
        return state, {}
    # A run under "16-mixed" saved a loss scale in extras: prepare `like` the same way.
    like = policy.prepare_state(state)
    state, meta = checkpoint.restore(path, like=like), checkpoint.load_meta(path)
    if manager is not None and hasattr(state, "step"):
        # This run continues the checkpoint it resumed from: newer ones (a branch abandoned
        # by a rollback, or corrupt ones skipped above) must not count as its newest, nor be
        # overwritten or evicted by its saves.
        aside = manager.set_aside(int(state.step), f"the run resumed from {str(path)!r}; these "
                                  "are newer, from another branch of the run or corrupt")
        if aside is not None:
            warnings.warn(f"fit: resumed from {str(path)!r}; the newer checkpoints there were "
                          f"moved, untouched, to {str(aside)!r}, so that resume='auto' finds "
                          "this run's own newest.", stacklevel=3)
    return state, meta


def _skipped_updates(opt_state: Any) -> int:
    """``apply_if_finite``'s count of skipped updates in ``opt_state`` (0 if none wraps it)."""
    node = opt_state
    while node is not None:
        if hasattr(node, "total_notfinite"):
            return int(node.total_notfinite)
        node = (node.inner_opt_state if hasattr(node, "inner_opt_state")
                else getattr(node, "inner_state", None))
    return 0


def _warn_if_inexact(order: LoaderOrder, skip: int, rng: Any) -> None:
    """At every resume, say so when it may not repeat the uninterrupted run exactly."""
    problems = []
    why = order.why_not_mid_epoch if skip else order.why_not
    if why is not None:
        problems.append(why)
    if rng is None:
        problems.append("the checkpoint holds no global random state (written by an older "
                        "functrain), so unkeyed randomness (nn.Dropout without a key, "
                        "torch.rand) draws other numbers")
    if problems:
        where = f"mid-epoch (after {skip} batches)" if skip else "at an epoch boundary"
        warnings.warn(f"resume {where}: not guaranteed to be exact: " + "; ".join(problems)
                      + ".", stacklevel=3)


def _restore_rng(state: Any) -> None:
    missing = _rng_state.restore(state)
    if missing:
        warnings.warn("resume: not guaranteed to be exact: could not restore "
                      + ", ".join(missing) + ".", stacklevel=3)


def _higher_is_better(name: str) -> bool:
    low = name.lower()
    return any(w in low for w in ("acc", "f1", "precision", "recall", "auc", "score"))


class _StopSignal:
    """SIGINT/SIGTERM -> stop at the next step boundary; a second SIGINT interrupts at once.

    ``terminated`` records a SIGTERM (fit then exits with status 143 after saving, when
    ``exit_on_sigterm``); ``interrupted`` a second SIGINT (its KeyboardInterrupt goes to the
    caller).
    """

    def __init__(self, exit_on_sigterm: bool = True) -> None:
        self.reason: str | None = None
        self.exit_on_sigterm = exit_on_sigterm
        self.terminated = False
        self.interrupted = False
        self._old: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        name = signal.Signals(signum).name
        if self.reason is not None and signum == signal.SIGINT:
            self.interrupted = True
            raise KeyboardInterrupt
        self.terminated = self.terminated or signum == signal.SIGTERM
        self.reason = f"received {name}"

    def __enter__(self) -> _StopSignal:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)
