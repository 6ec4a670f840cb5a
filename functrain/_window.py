"""`MetricWindow`: the metrics of the steps since the last read, as one mergeable value; and
`FirstStep`, the metric of the runner's non-finite guard."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any, NamedTuple

import torch

from . import metrics as _metrics
from . import tree as _tree

__all__ = ["NONFINITE", "NONFINITE_PARAMS", "FirstStep", "MetricWindow", "nonfinite_steps"]


class MetricWindow(NamedTuple):
    """The steps' metrics merged since the window began, on the device (CLU-style).

    A compiled step merges its metrics into the window it is given (`CompiledStep.run`) without
    a host sync; the loop reads the window once per log window with `compute` and starts the
    next one with `reset`. Like a state, a window handed to the runner is consumed: keep the one
    it returns.

    Attributes:
        metrics: ``{name: functrain.metrics.Metric}``.

    Example:
        >>> import torch, functrain as ft
        >>> run = ft.compile_step(lambda s, b: (s, {"x": b.mean()}), compile="eager",
        ...                       donate=False)
        >>> state, window = run.run({"w": torch.zeros(1)}, torch.ones(2), None)
        >>> state, window = run.run(state, torch.zeros(2), window)
        >>> window.compute()
        {'x': 0.5}
    """

    metrics: dict[str, Any]

    def compute(self, reduce: Any = None) -> dict[str, float]:
        """Every metric's value as a Python float, read with one device-to-host transfer.

        ``reduce`` (e.g. `functrain.distributed.reduce_metrics`) is applied to the metrics
        first: on several ranks, their windows merged with one collective.
        """
        return _metrics.compute_all(self.metrics if reduce is None else reduce(self.metrics))

    def reset(self) -> MetricWindow:
        """Empty the window in place (no host sync; the tensors keep their addresses, which
        CUDA graphs replay over) and return it."""
        leaves = _tree.leaves(self.metrics)
        for x in leaves:
            x.zero_()
        if leaves and leaves[0].device.type == "xla":
            # Run the reset as a small graph of its own, compiled once, rather than letting it
            # join (and change) the next step's graph.
            from . import _xla

            _xla.sync()
        return self

    def tensors(self, reduce: Any = None) -> list[torch.Tensor]:
        """Copies of the window's tensors, e.g. to save in a checkpoint (``reduce`` as in
        `compute`)."""
        metrics = self.metrics if reduce is None else reduce(self.metrics)
        return [x.clone() for x in _tree.leaves(metrics)]

    def merge_saved(self, saved: Sequence[torch.Tensor]) -> MetricWindow:
        """Merge a window saved with `tensors` in front of this one, in place; return it.

        A resumed run continues the window it stopped in: its steps come first in the merge.
        """
        leaves = _tree.leaves(self.metrics)
        if len(saved) != len(leaves):
            raise ValueError(f"resume: the checkpoint's metric window holds {len(saved)} "
                             f"tensors, the step's metrics need {len(leaves)}. HINT: resume "
                             "with the step function the checkpoint was written with.")
        it = iter(saved)
        before = _tree.map(lambda x: next(it).to(device=x.device, dtype=x.dtype), self.metrics)
        merged = {k: before[k].merge(m) for k, m in self.metrics.items()}
        for x, v in zip(leaves, _tree.leaves(merged), strict=True):
            x.copy_(v)
        return self


NONFINITE = "__nonfinite_step__"  # the window entry of the non-finite guard
NONFINITE_PARAMS = "__nonfinite_params_step__"  # the same, for the new params alone


def nonfinite_steps(window: MetricWindow | None) -> tuple[int, int]:
    """With ``check_finite``: the first step of ``window`` with a non-finite metric or param, and
    the first with non-finite params (0: none). One small host read; the window is kept."""
    metrics = None if window is None else window.metrics
    if not metrics or NONFINITE not in metrics:
        return 0, 0
    first, params = torch.stack([metrics[NONFINITE].step,
                                 metrics[NONFINITE_PARAMS].step]).tolist()
    return int(first), int(params)


@dataclasses.dataclass(frozen=True, eq=False)
class FirstStep(_metrics.Metric):
    """The first step of a window at which a condition held (0: never): the runner's
    non-finite guard, merged on the device like any metric and read with the window."""

    step: torch.Tensor

    @classmethod
    def empty(cls, device: Any = None) -> FirstStep:
        return cls(torch.zeros((), dtype=torch.int64, device=device))

    @classmethod
    def where(cls, condition: torch.Tensor, step: torch.Tensor) -> FirstStep:
        return cls(torch.where(condition, step.to(torch.int64), 0))

    def merge(self, other: FirstStep) -> FirstStep:
        return FirstStep(torch.where(self.step > 0, self.step, other.step))

    def compute(self) -> torch.Tensor:
        return self.step
