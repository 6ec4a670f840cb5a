"""The callback protocol: small objects that `functrain.fit` calls at a few named points."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

__all__ = ["Callback", "Loop"]


@dataclasses.dataclass
class Loop:
    """What a callback sees of a running `functrain.fit` loop.

    Attributes:
        state: the latest training state (valid until the next step donates it).
        step: the global step count (a Python int, no host sync).
        epoch: the current epoch, from 0.
        run_dir: the run directory, or ``None``.
        metrics: the latest logged values, ``{"train/loss": ..., "val/accuracy": ...}``.
        stop_reason: set by `request_stop`; the loop stops at the next step boundary.
        samples: examples trained on since the run began (from the batches' first dimension);
            a resumed run continues the count of the checkpoint it resumed from.
        run_start: the step at which the run began (``state.step`` at the first `fit` call of
            the run; a resumed run keeps its original start), so ``step - run_start`` steps
            trained on ``samples`` examples.
        error: the exception ending the run, if one is propagating (seen by `on_run_end`).
        callbacks: the run's callbacks (for savers that store every callback's state).
        loggers: the run's `functrain.loggers.Logger` objects (`log` writes to them).
        total_steps: the step count at which the run ends, if known (``max_steps`` or
            epochs times a sized loader's length), counted like ``step``.
        total_epochs: ``fit``'s ``epochs``, if given.
        compiles: graphs the training step has compiled so far (set before `on_run_end`).
        compile_time: seconds of the calls that compiled them (set with ``compiles``).
        compile_cache_hits: how many of those compiles functrain's step cache served by
            loading a step an earlier process compiled (a warm start; 0: all cold).
        compile_note: with ``compile="auto"`` on a cold CPU start, how the background
            compile went (eager calls run meanwhile, when it switched, or why it stayed
            eager); ``None`` otherwise.
        nonfinite_step: with a `functrain.callbacks.NonFiniteGuard`, the first step of the
            window just logged whose metrics or params held inf/NaN (0: none).
        nonfinite_params_step: the same, for the params alone (0: none).
        log_time: ``time.perf_counter()`` when the window just logged was read (set by `fit`
            before ``on_log``; one clock for the bar's and the summary's rates).

    Example:
        >>> loop = Loop(state=None, step=10, epoch=0)
        >>> loop.request_stop("enough")
        >>> loop.stop_reason
        'enough'
    """

    state: Any
    step: int
    epoch: int
    run_dir: str | None = None
    metrics: dict[str, float] = dataclasses.field(default_factory=dict)
    stop_reason: str | None = None
    samples: int = 0
    run_start: int = 0
    error: BaseException | None = None
    callbacks: tuple[Any, ...] = ()
    loggers: tuple[Any, ...] = ()
    total_steps: int | None = None
    total_epochs: int | None = None
    compiles: int = 0
    compile_time: float = 0.0
    compile_cache_hits: int = 0
    compile_note: str | None = None
    nonfinite_step: int = 0
    nonfinite_params_step: int = 0
    log_time: float | None = None

    def request_stop(self, reason: str) -> None:
        """Ask the loop to stop at the next step boundary, recording why."""
        self.stop_reason = reason

    def log(self, values: dict[str, float]) -> None:
        """Log host values (floats) at the current step through the run's loggers.

        Example:
            >>> loop = Loop(state=None, step=3, epoch=0)
            >>> loop.log({"lr": 0.1}); loop.metrics
            {'lr': 0.1}
        """
        self.metrics.update(values)
        for logger in self.loggers:
            logger.log_metrics(values, self.step)

    def callback_states(self) -> dict[str, Any]:
        """``{cb.state_key: cb.state_dict()}`` for every callback, for checkpoints."""
        return {cb.state_key: cb.state_dict() for cb in self.callbacks}


class Callback:
    """Base class of callbacks; override the methods you need (each is a no-op here).

    `functrain.fit` calls, in order: `on_run_start` once; `on_log` after each logged window of
    training metrics; `on_eval` after each evaluation; `on_run_end` once (also after a stop or
    an interruption). A callback stops training with ``loop.request_stop(reason)``; return
    values are ignored.

    Example:
        >>> class StopAt(Callback):
        ...     def __init__(self, n):
        ...         self.n = n
        ...     def on_log(self, loop, metrics):
        ...         if loop.step >= self.n:
        ...             loop.request_stop(f"reached step {self.n}")
        >>> cb, loop = StopAt(5), Loop(state=None, step=6, epoch=0)
        >>> cb.on_log(loop, {"train/loss": 0.1}); loop.stop_reason
        'reached step 5'
    """

    @property
    def state_key(self) -> str:
        """The key of this callback's state in a checkpoint (unique per run)."""
        return type(self).__name__

    def state_dict(self) -> dict[str, Any]:
        """JSON-serializable state to save in checkpoints (default: none)."""
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore what `state_dict` returned (on resume)."""

    def on_run_start(self, loop: Loop) -> None:
        """Called once before the first step."""

    def on_log(self, loop: Loop, metrics: dict[str, float]) -> None:
        """Called after a window of training metrics was read and logged."""

    def on_eval(self, loop: Loop, metrics: dict[str, float]) -> None:
        """Called after an evaluation, with its metrics (prefixed ``val/``)."""

    def on_run_end(self, loop: Loop) -> None:
        """Called once at the end, whatever ended the run."""
