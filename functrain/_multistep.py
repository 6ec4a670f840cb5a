"""K steps per call: one compiled call runs K consecutive training steps over K stacked batches.

On a fast device the host pays a fixed cost per call (Python, Dynamo's guards, the launch);
running K steps in one call pays it once per K steps, as TPU loops do with
``steps_per_execution``. The K-step function is an ordinary pure step: it unrolls K calls of
the user's step in program order, so it computes exactly what K single calls compute, and it
merges the K steps' metrics into one value the runner then merges into its window (a bare
0-d metric becomes a `functrain.metrics.Mean`, exactly as one step at a time would).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch

from . import metrics as _metrics
from . import tree as _tree

__all__ = ["group_batches", "stack_batches", "unrolled_step"]


def unrolled_step(step_fn: Callable[[Any, Any], tuple[Any, Any]], k: int
                  ) -> Callable[[Any, Any], tuple[Any, Any]]:
    """``step_fn`` applied ``k`` times over a batch whose leaves have a leading axis of ``k``.

    Example:
        >>> import torch
        >>> def step(s, b):
        ...     return s + b.sum(), {"x": b.sum()}
        >>> s, m = unrolled_step(step, 3)(torch.tensor(0.0), torch.arange(6.0).view(3, 2))
        >>> float(s), float(m["x"].compute())
        (15.0, 5.0)
    """

    def step_k(state: Any, batches: Any) -> tuple[Any, Any]:
        window = None
        for i in range(k):
            state, metrics = step_fn(state, _tree.map(lambda x, i=i: x[i], batches))
            metrics = _metrics.to_metrics(metrics)
            window = metrics if window is None else _metrics.merge_all(window, metrics)
        return state, window

    step_k.__name__ = f"{getattr(step_fn, '__name__', 'step')}_x{k}"
    return step_k


def stack_batches(batches: list[Any]) -> Any:
    """The batches' leaves stacked along a new leading axis (one batch of ``len(batches)``).

    Example:
        >>> import torch
        >>> stack_batches([(torch.zeros(2), torch.ones(())), (torch.ones(2), torch.zeros(()))])
        (tensor([[0., 0.],
                [1., 1.]]), tensor([1., 0.]))
    """
    return _tree.map(lambda *xs: torch.stack(xs), batches[0], *batches[1:])


def group_batches(batches: Iterable[Any], k: int, limit: int | None = None
                  ) -> Iterator[tuple[int, Any]]:
    """Yield ``(n, batch)``: ``n = k`` and ``k`` stacked batches, or ``n = 1`` and one batch.

    Batches are grouped ``k`` at a time while ``k`` more fit under ``limit`` (steps left, or
    ``None``) and have one shape; the rest of an epoch, a smaller last batch and the steps
    before ``limit`` go one at a time, so the K-step call compiles once for one batch shape.

    Example:
        >>> import torch
        >>> [n for n, _ in group_batches([torch.zeros(2)] * 7, 3)]
        [3, 3, 1]
        >>> [n for n, _ in group_batches([torch.zeros(2)] * 7, 3, limit=5)]
        [3, 1, 1]
    """
    pending: list[Any] = []
    done = 0

    def shape(b: Any) -> list[Any]:
        return [(x.shape, x.dtype) for x in _tree.leaves(b)]

    for batch in batches:
        if limit is not None and done >= limit:
            break
        if pending and shape(batch) != shape(pending[0]):
            for b in pending:
                yield 1, b
            done += len(pending)
            pending = []
        pending.append(batch)
        if len(pending) == k:
            if limit is not None and done + k > limit:
                for b in pending:
                    if done < limit:
                        yield 1, b
                        done += 1
                pending = []
                continue
            yield k, stack_batches(pending)
            done += k
            pending = []
    for b in pending:
        if limit is not None and done >= limit:
            break
        yield 1, b
        done += 1
