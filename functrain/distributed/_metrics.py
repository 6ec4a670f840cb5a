"""Exact cross-rank reduction of metric windows: gather the sufficient statistics, then merge.

A `functrain.metrics` value carries the statistics its result is computed from (``Accuracy``:
correct and total; ``Mean``: total and weight; ``Std``: count, mean and m2). Merging the ranks'
values with the metric's own ``merge`` is therefore exact: an accuracy over two ranks is their
total correct over their total seen, never a mean of two means. `reduce_metrics` gathers every
rank's window with one collective (its tensors packed into one byte buffer) and merges them in
rank order, on every rank.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .. import metrics as _metrics
from ._collectives import all_gather

__all__ = ["reduce_metrics"]


def reduce_metrics(window: Any, *, group: Any = None) -> Any:
    """Merge every rank's metric window into one, with a single collective.

    Call it when the window is read (once per log window or evaluation), never per step.
    Every rank must call it, with windows of the same keys and metric types.

    Args:
        window: ``{name: metric or 0-d tensor}`` (a bare tensor counts as a `Mean` of it),
            or one `functrain.metrics.Metric`.
        group: a process group; default: the whole world.

    Returns:
        The merged window, same structure (bare tensors come back as `Mean` values), on every
        rank; ``window`` itself without a process group.

    Example:
        >>> import torch, functrain as ft
        >>> acc = {"accuracy": ft.metrics.Accuracy(torch.tensor(3), torch.tensor(4))}
        >>> ft.distributed.reduce_metrics(acc)["accuracy"].compute()   # one process
        tensor(0.7500)
    """
    single = isinstance(window, _metrics.Metric)
    if not single:
        if not isinstance(window, Mapping):
            raise TypeError(f"window: expected a dict of metrics or one metric, got "
                            f"{type(window).__name__}.")
        window = _metrics.to_metrics(window, "window")
    parts = all_gather(window, group=group)
    merged = parts[0]
    for other in parts[1:]:
        merged = merged.merge(other) if single else _metrics.merge_all(merged, other, "window")
    return merged
