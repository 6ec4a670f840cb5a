"""Helpers shared by the callbacks: argument checks, the monitored value, strict-JSON floats."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from ._protocol import Loop

_MODES = ("min", "max")
_OP_TEXT = {"min": "<", "max": ">"}




def _check_mode(mode: Any) -> str:
    if mode not in _MODES:
        raise ValueError(f"mode: expected 'min' or 'max', got {mode!r}.")
    return mode


def _check_monitor(monitor: Any, owner: str) -> str:
    if not isinstance(monitor, str) or not monitor.startswith(("val/", "train/")):
        raise ValueError(
            f"{owner}: monitor: expected a metric name starting with 'val/' or 'train/', got "
            f"{monitor!r}. HINT: fit prefixes eval_fn's metrics with 'val/' and step_fn's with "
            f"'train/', e.g. {owner}(monitor='val/loss').")
    return monitor


def _monitored(owner: str, monitor: str, metrics: Mapping[str, Any]) -> float:
    """``metrics[monitor]`` as a float, or an error listing the available names."""
    if monitor not in metrics:
        where = "evaluation" if monitor.startswith("val/") else "training window"
        raise ValueError(
            f"{owner}(monitor={monitor!r}): expected {monitor!r} among the {where} metrics, "
            f"got {sorted(metrics)}. HINT: monitor one of those names (the metric names "
            "returned by your eval_fn / step_fn, prefixed 'val/' / 'train/').")
    return float(metrics[monitor])


def _encode(x: float | None) -> float | str | None:
    """A float as strict JSON: non-finite values as "NaN" / "Infinity" / "-Infinity"."""
    if x is None or math.isfinite(x):
        return x
    return "NaN" if math.isnan(x) else ("Infinity" if x > 0 else "-Infinity")


def _decode(x: Any) -> float | None:
    return None if x is None else float(x)  # float() reads "NaN", "Infinity", "-Infinity"


def _publish(loop: Loop, values: dict[str, float]) -> None:
    """Hand monitor values to the loop: ``loop.log`` when the loop has one, else loop.metrics."""
    log = getattr(loop, "log", None)
    if callable(log):
        log(values)
    else:
        loop.metrics.update(values)
