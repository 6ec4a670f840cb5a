"""`MetricWindow`: the metrics of the steps since the last read, as one mergeable value."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import torch

from . import metrics as _metrics
from . import tree as _tree

__all__ = ["MetricWindow"]


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

    def compute(self) -> dict[str, float]:
        """Every metric's value as a Python float, read with one device-to-host transfer."""
        return _metrics.compute_all(self.metrics)

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

    def tensors(self) -> list[torch.Tensor]:
        """Copies of the window's tensors, e.g. to save in a checkpoint."""
        return [x.clone() for x in _tree.leaves(self.metrics)]

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
