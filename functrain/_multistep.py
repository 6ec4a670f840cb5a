"""K steps per call: the batches side (stacking, grouping) of ``compile_step(steps_per_call=K)``.

On a fast device the host pays a fixed cost per call (Python, Dynamo's guards, the launch);
running K steps in one call pays it once per K steps, as TPU loops do with
``steps_per_execution``. The runner unrolls the K steps into one graph
(`CompiledStep.run_steps`); `fit` feeds it K batches at a time, stacked by `stack_batches`
and grouped by `group_batches`.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import torch

from . import tree as _tree

__all__ = ["group_batches", "stack_batches", "stacked_batch_size"]


def stack_batches(batches: Sequence[Any]) -> Any:
    """Stack batches of one structure and shape along a new first axis, for
    `CompiledStep.run_steps` (``compile_step(step, steps_per_call=len(batches))``).

    Args:
        batches: batches (tensors, or tuples/dicts of tensors) with equal shapes.

    Returns:
        One batch whose every leaf has a new first dimension of ``len(batches)``.

    Raises:
        ValueError: ``batches`` is empty.
        functrain.tree.TreeMismatchError: the batches differ in structure (names the path).

    Example:
        >>> import torch, functrain as ft
        >>> ft.stack_batches([(torch.zeros(2), torch.ones(())), (torch.ones(2), torch.zeros(()))])
        (tensor([[0., 0.],
                [1., 1.]]), tensor([1., 0.]))
    """
    if not batches:
        raise ValueError("batches: expected at least one batch, got none.")
    return _tree.map(lambda *xs: torch.stack(xs), batches[0], *batches[1:])


def stacked_batch_size(batches: Any) -> int | None:
    """The batch size of K stacked batches: the second dimension of the first leaf with one.

    Example:
        >>> import torch
        >>> stacked_batch_size((torch.zeros(4, 8, 3), torch.zeros(4, 8)))
        8
    """
    for x in _tree.leaves(batches):
        if isinstance(x, torch.Tensor) and x.dim() > 1:
            return x.shape[1]
    return None


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
