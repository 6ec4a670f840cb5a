"""In-memory batches with a seeded, reproducible order.

`ArrayLoader` is what a small data set held in tensors needs: no worker processes, no per-item
collation (a batch is one ``index_select`` per tensor), and a data order that is a pure
function of ``(seed, epoch)``, so two runs with the same seed see the same batches.

Example:
    >>> import torch, functrain as ft
    >>> x, y = torch.arange(10.0).unsqueeze(1), torch.arange(10)
    >>> loader = ft.data.ArrayLoader((x, y), batch_size=4, shuffle=False)
    >>> [len(b[1]) for b in loader]
    [4, 4, 2]
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch

from . import tree as _tree
from ._data_helpers import overfit_batches as overfit_batches
from ._data_helpers import take as take

__all__ = ["ArrayLoader", "overfit_batches", "take"]


class ArrayLoader:
    """Batches of a pytree of tensors that share their first dimension.

    Args:
        arrays: a tensor, or a tuple/dict (any pytree) of tensors with equal first dimension.
        batch_size: examples per batch.
        shuffle: draw a new permutation every epoch from ``(seed, epoch)``.
        seed: the seed of the permutations.
        drop_last: drop the last batch when it is smaller than ``batch_size`` (keeps one
            compiled graph; otherwise the partial batch compiles once more).

    The epoch counter advances each time iteration starts; set it with `set_epoch` (e.g. on
    resume).

    Raises:
        ValueError: if the tensors disagree on their first dimension, or batch_size < 1.

    Example:
        >>> import torch
        >>> loader = ArrayLoader(torch.arange(6), batch_size=3, shuffle=True, seed=0)
        >>> first = [b.tolist() for b in loader]
        >>> again = ArrayLoader(torch.arange(6), batch_size=3, shuffle=True, seed=0)
        >>> first == [b.tolist() for b in again]
        True
    """

    def __init__(self, arrays: Any, batch_size: int, *, shuffle: bool = False, seed: int = 0,
                 drop_last: bool = False) -> None:
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size: expected a positive int, got {batch_size!r}.")
        leaves = _tree.leaves_with_path(arrays, "arrays")
        if not leaves:
            raise ValueError("arrays: expected at least one tensor, got none.")
        sizes = set()
        for path, x in leaves:
            if not isinstance(x, torch.Tensor) or x.dim() == 0:
                what = "a 0-d tensor" if isinstance(x, torch.Tensor) else type(x).__name__
                raise TypeError(f"{path}: expected a tensor with a batch dimension, got {what}.")
            sizes.add(x.shape[0])
        if len(sizes) != 1:
            detail = ", ".join(f"{p}: {x.shape[0]}" for p, x in leaves)
            raise ValueError(f"arrays: expected tensors of equal first dimension, got {detail}.")
        self.arrays = arrays
        self.n = sizes.pop()
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.drop_last = drop_last
        self.epoch = 0

    def __len__(self) -> int:
        if self.drop_last:
            return self.n // self.batch_size
        return -(-self.n // self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        """Make the next iteration use the order of ``epoch``."""
        self.epoch = epoch

    def order(self, epoch: int) -> torch.Tensor:
        """The example order of ``epoch`` (a permutation when shuffling)."""
        if not self.shuffle:
            return torch.arange(self.n)
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(self.n, generator=g)

    def __iter__(self) -> Iterator[Any]:
        order = self.order(self.epoch)
        self.epoch += 1
        for i in range(len(self)):
            start, stop = i * self.batch_size, min((i + 1) * self.batch_size, self.n)
            if not self.shuffle:
                yield _tree.map(lambda x, a=start, b=stop: x[a:b], self.arrays)
            else:
                idx = order[start:stop]
                yield _tree.map(lambda x, i=idx: x.index_select(0, i.to(x.device)), self.arrays)
