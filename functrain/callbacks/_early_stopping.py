"""`EarlyStopping`: stop when a monitored metric stops improving."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from .._errors import check_int, check_number
from ._common import (
    _OP_TEXT,
    _check_mode,
    _check_monitor,
    _decode,
    _encode,
    _monitored,
)
from ._protocol import Callback, Loop

__all__ = ["EarlyStopping"]



class EarlyStopping(Callback):
    """Stop training when a monitored metric stops improving, reaches a goal, or diverges.

    Follows Lightning's ``EarlyStopping`` (``lightning.pytorch.callbacks.EarlyStopping``,
    ``_evaluate_stopping_criteria``) check for check. At each check of the metric (each
    evaluation for ``"val/..."``, each log window for ``"train/..."``), in this order:

    1. ``check_finite`` and the value is NaN or +-inf: stop.
    2. ``stopping_threshold`` is set and the value is strictly better than it: stop.
    3. ``divergence_threshold`` is set and the value is strictly worse than it: stop.
    4. The value improves on the best so far, i.e. ``current - d < best`` in ``"min"`` mode and
       ``current - d > best`` in ``"max"`` mode with ``d = -min_delta`` (min) or ``+min_delta``
       (max), Lightning's sign convention (a positive ``min_delta`` demands a change of *more*
       than ``min_delta``; a negative one lets a slightly worse value count): it becomes the
       best and the wait count resets to 0.
    5. Otherwise the wait count grows by one; at ``patience`` training stops.

    A NaN that reaches step 4 (``check_finite=False``) is never an improvement. Stopping goes
    through ``loop.request_stop(reason)``; the reason is also kept in `reason`. As in
    Lightning (``strict=True``), a missing monitor is an error listing the available names.

    Args:
        monitor: the metric, by its full name, e.g. ``"val/loss"`` or ``"train/loss"``.
        mode: ``"min"`` (lower is better) or ``"max"``.
        patience: how many checks in a row without improvement stop training (>= 0).
        min_delta: the change that counts as an improvement (see step 4).
        stopping_threshold: stop as soon as the metric is better than this.
        divergence_threshold: stop as soon as the metric is worse than this.
        check_finite: stop on a NaN or infinite value.

    Attributes:
        wait_count: checks since the last improvement.
        best_score: the best value so far (``inf`` / ``-inf`` before the first).
        best_step: the step of the best value, or ``None``.
        stopped_step: the step at which this callback asked to stop, or ``None``.
        reason: why it stopped, or ``None``.

    Raises:
        ValueError: for a bad argument, or (during fit) when the monitored metric is missing.

    Example:
        >>> from functrain import Loop
        >>> es, loop = EarlyStopping("val/loss", patience=2), Loop(state=None, step=0, epoch=0)
        >>> for step, loss in enumerate([1.0, 0.5, 0.6, 0.7, 0.4], start=1):
        ...     loop.step = step
        ...     es.on_eval(loop, {"val/loss": loss})
        ...     if loop.stop_reason:
        ...         break
        >>> es.stopped_step, es.best_score, es.wait_count
        (4, 0.5, 2)
        >>> loop.stop_reason
        'EarlyStopping: val/loss did not improve in the last 2 checks (best 0.5 at step 2).'
    """

    def __init__(self, monitor: str, mode: str = "min", patience: int = 3,
                 min_delta: float = 0.0, stopping_threshold: float | None = None,
                 divergence_threshold: float | None = None, check_finite: bool = True) -> None:
        self.monitor = _check_monitor(monitor, "EarlyStopping")
        self.mode = _check_mode(mode)
        self.patience = check_int("patience", patience, minimum=0)
        self.min_delta = check_number("min_delta", min_delta)
        self.stopping_threshold = check_number("stopping_threshold", stopping_threshold,
                                               allow_none=True)
        self.divergence_threshold = check_number("divergence_threshold", divergence_threshold,
                                                 allow_none=True)
        if not isinstance(check_finite, bool):
            raise ValueError(f"check_finite: expected a bool, got {check_finite!r}.")
        self.check_finite = check_finite
        self.wait_count = 0
        self.best_score = math.inf if mode == "min" else -math.inf
        self.best_step: int | None = None
        self.stopped_step: int | None = None
        self.reason: str | None = None

    @property
    def state_key(self) -> str:
        """A key naming this callback's state among others', e.g. in a checkpoint's metadata.

        Example:
            >>> EarlyStopping("val/acc", mode="max").state_key
            'EarlyStopping[monitor=val/acc,mode=max]'
        """
        return f"EarlyStopping[monitor={self.monitor},mode={self.mode}]"

    def _better(self, a: float, b: float) -> bool:
        return a < b if self.mode == "min" else a > b

    def _stop_reason(self, current: float, step: int) -> str | None:
        """Lightning's ``_evaluate_stopping_criteria``; updates best / wait_count."""
        m = self.monitor
        best = f"best {self.best_score:.4g}" + (
            f" at step {self.best_step}" if self.best_step is not None else "")
        if self.check_finite and not math.isfinite(current):
            return f"{m} = {current} is not finite ({best})."
        if self.stopping_threshold is not None and self._better(current,
                                                                self.stopping_threshold):
            return (f"stopping threshold reached: {m} = {current:.4g} "
                    f"{_OP_TEXT[self.mode]} {self.stopping_threshold:.4g}.")
        if self.divergence_threshold is not None and self._better(-current,
                                                                  -self.divergence_threshold):
            worse = _OP_TEXT["max" if self.mode == "min" else "min"]
            return (f"divergence threshold reached: {m} = {current:.4g} {worse} "
                    f"{self.divergence_threshold:.4g}.")
        signed_delta = self.min_delta if self.mode == "max" else -self.min_delta
        if self._better(current - signed_delta, self.best_score):
            self.best_score, self.best_step, self.wait_count = current, step, 0
            return None
        self.wait_count += 1
        if self.wait_count >= self.patience:
            by = f" by more than {abs(self.min_delta):.4g}" if self.min_delta else ""
            return f"{m} did not improve{by} in the last {self.wait_count} checks ({best})."
        return None

    def _check(self, loop: Loop, metrics: Mapping[str, Any]) -> None:
        current = _monitored("EarlyStopping", self.monitor, metrics)
        reason = self._stop_reason(current, loop.step)
        if reason is not None:
            self.stopped_step = loop.step
            self.reason = f"EarlyStopping: {reason}"
            loop.request_stop(self.reason)

    def on_log(self, loop: Loop, metrics: dict[str, float]) -> None:
        """Check a ``"train/..."`` monitor against the window just logged."""
        if self.monitor.startswith("train/"):
            self._check(loop, metrics)

    def on_eval(self, loop: Loop, metrics: dict[str, float]) -> None:
        """Check a ``"val/..."`` monitor against the evaluation just run."""
        if self.monitor.startswith("val/"):
            self._check(loop, metrics)

    def state_dict(self) -> dict[str, Any]:
        """The counters a resumed run needs, as strict-JSON values (non-finite as strings).

        Example:
            >>> EarlyStopping("val/loss").state_dict()
            {'wait_count': 0, 'best_score': 'Infinity', 'best_step': None, 'stopped_step': None}
        """
        return {"wait_count": self.wait_count, "best_score": _encode(self.best_score),
                "best_step": self.best_step, "stopped_step": self.stopped_step}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore `state_dict`'s counters, so patience counting continues where it stopped.

        Example:
            >>> es = EarlyStopping("val/loss")
            >>> es.load_state_dict({"wait_count": 2, "best_score": 0.25, "best_step": 40,
            ...                     "stopped_step": None})
            >>> es.wait_count, es.best_score
            (2, 0.25)
        """
        missing = {"wait_count", "best_score", "stopped_step"} - set(state)
        if missing:
            raise ValueError(f"EarlyStopping.load_state_dict: expected keys wait_count, "
                             f"best_score, stopped_step, got {sorted(state)}.")
        self.wait_count = check_int("wait_count", state["wait_count"], minimum=0)
        self.best_score = _decode(state["best_score"])
        self.best_step = state.get("best_step")
        self.stopped_step = state["stopped_step"]


