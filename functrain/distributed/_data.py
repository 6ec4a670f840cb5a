"""Each rank's share of every epoch, with ``DistributedSampler``'s semantics.

The examples of an epoch are put in one global order (a seeded permutation of ``(seed, epoch)``
when shuffling, the identity otherwise), the same on every rank; rank ``r`` of ``w`` takes
positions ``r, r + w, r + 2w, ...``. For training (``even=True``) the order is first padded by
repeating its start until its length divides by ``w`` (as ``DistributedSampler`` does), so every
rank runs the same number of steps, which their collectives need. For evaluation
(``even=False``) nothing is padded: each example is seen by exactly one rank, and the last
shards may be one example shorter.

The loader's batch size is the per-rank batch; the global batch is ``w`` times it. Because rank
``r``'s positions interleave, the ranks' ``i``-th batches together hold the global order's
``i``-th block of ``w * batch_size`` examples: with ``shuffle=False``, 2 ranks x batch 8 see the
examples 1 process x batch 16 sees.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import torch

from .. import tree as _tree
from .._errors import check_int
from ..data import ArrayLoader
from ._env import rank as _rank
from ._env import world_size as _world_size

__all__ = ["ShardSampler", "ShardedLoader", "presharded", "shard", "shard_indices"]


def shard_indices(order: torch.Tensor, rank: int, world_size: int, *, even: bool = True
                  ) -> torch.Tensor:
    """Rank ``rank``'s positions of a global ``order`` of example indices.

    Args:
        order: the epoch's example indices (1-d), identical on every rank.
        rank: this rank, ``0 <= rank < world_size``.
        world_size: the number of ranks.
        even: pad ``order`` by repeating its start to a multiple of ``world_size`` so every
            rank gets ``ceil(n / world_size)`` indices (training); ``False``: no padding, each
            index goes to exactly one rank (evaluation).

    Returns:
        ``order[rank::world_size]`` of the (padded) order.

    Example:
        >>> import torch
        >>> shard_indices(torch.arange(5), 1, 2).tolist()
        [1, 3, 0]
        >>> shard_indices(torch.arange(5), 1, 2, even=False).tolist()
        [1, 3]
    """
    check_int("world_size", world_size, minimum=1)
    check_int("rank", rank, minimum=0)
    if rank >= world_size:
        raise ValueError(f"rank: expected an int < world_size={world_size}, got {rank}.")
    n = order.numel()
    if even and n % world_size:
        total = math.ceil(n / world_size) * world_size
        reps = math.ceil(total / n)
        order = order.repeat(reps)[:total]
    return order[rank::world_size]


class ShardSampler(torch.utils.data.Sampler):
    """A sampler of one rank's indices: ``DistributedSampler``'s order, optionally unpadded.

    With ``even=True`` it yields exactly what ``torch.utils.data.DistributedSampler(dataset,
    world_size, rank, shuffle, seed)`` yields; ``even=False`` drops the padding, so that an
    evaluation sees every example exactly once over all ranks.

    Args:
        size: the number of examples (``len(dataset)``).
        rank: this rank; default: `functrain.distributed.rank`.
        world_size: the number of ranks; default: `functrain.distributed.world_size`.
        shuffle: a new permutation every epoch, from ``seed + epoch``.
        seed: the permutations' seed; the same on every rank.
        even: pad to equal shares (training) or not (evaluation).

    Example:
        >>> list(ShardSampler(5, rank=0, world_size=2))
        [0, 2, 4]
        >>> list(ShardSampler(5, rank=1, world_size=2, even=False))
        [1, 3]
    """

    def __init__(self, size: int, *, rank: int | None = None, world_size: int | None = None,
                 shuffle: bool = False, seed: int = 0, even: bool = True) -> None:
        self.size = check_int("size", size, minimum=1)
        self.world_size = _world_size() if world_size is None else world_size
        self.rank = _rank() if rank is None else rank
        check_int("world_size", self.world_size, minimum=1)
        check_int("rank", self.rank, minimum=0)
        self.shuffle, self.seed, self.even = bool(shuffle), check_int("seed", seed), bool(even)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Make the next iteration use the order of ``epoch``."""
        self.epoch = check_int("epoch", epoch, minimum=0)

    def order(self, epoch: int) -> torch.Tensor:
        """The global order of ``epoch`` (the same on every rank)."""
        if not self.shuffle:
            return torch.arange(self.size)
        g = torch.Generator().manual_seed(self.seed + epoch)
        return torch.randperm(self.size, generator=g)

    def indices(self, epoch: int) -> torch.Tensor:
        """This rank's indices in ``epoch``."""
        return shard_indices(self.order(epoch), self.rank, self.world_size, even=self.even)

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices(self.epoch).tolist())

    def __len__(self) -> int:
        if self.even:
            return math.ceil(self.size / self.world_size)
        return len(range(self.rank, self.size, self.world_size))


def _batches(n: int, batch_size: int, drop_last: bool) -> int:
    return n // batch_size if drop_last else math.ceil(n / batch_size)


class ShardedLoader:
    """One rank's view of a loader: the same batches API, over this rank's share of each epoch.

    Built by `shard`. Like `functrain.data.ArrayLoader`, it advances its epoch each time
    iteration starts, and `set_epoch` replays any epoch (``fit`` calls it on resume).

    Attributes:
        loader: the loader it shards.
        rank: this rank.
        world_size: the number of ranks.
        even: equal shares, padded (training), or exact shares (evaluation).
        epoch: the epoch the next iteration runs.

    Example:
        >>> import torch, functrain as ft
        >>> base = ft.data.ArrayLoader(torch.arange(10), batch_size=2)
        >>> [b.tolist() for b in ft.distributed.shard(base, rank=1, world_size=2)]
        [[1, 3], [5, 7], [9]]
    """

    def __init__(self, loader: Any, *, rank: int, world_size: int, even: bool,
                 seed: int = 0) -> None:
        self.loader, self.rank, self.world_size, self.even = loader, rank, world_size, even
        self.epoch = 0
        self._sampler: ShardSampler | None = None
        self._inner: Any = None
        if not isinstance(loader, ArrayLoader):
            self._sampler = ShardSampler(len(loader.dataset), rank=rank, world_size=world_size,
                                         shuffle=_shuffles(loader), seed=seed, even=even)
            self._inner = _rebuild_dataloader(loader, self._sampler)

    def set_epoch(self, epoch: int) -> None:
        """Make the next iteration use the order of ``epoch``."""
        self.epoch = check_int("epoch", epoch, minimum=0)

    def indices(self, epoch: int) -> torch.Tensor:
        """This rank's example indices in ``epoch``, in the order they are batched."""
        if self._sampler is not None:
            return self._sampler.indices(epoch)
        return shard_indices(self.loader.order(epoch), self.rank, self.world_size,
                             even=self.even)

    def __len__(self) -> int:
        if self._inner is not None:
            return len(self._inner)
        n = len(shard_indices(torch.arange(self.loader.n), self.rank, self.world_size,
                              even=self.even))
        return _batches(n, self.loader.batch_size, self.loader.drop_last)

    def __iter__(self) -> Iterator[Any]:
        epoch = self.epoch
        self.epoch += 1
        if self._inner is not None:
            self._sampler.set_epoch(epoch)
            yield from self._inner
            return
        idx = self.indices(epoch)
        bs, arrays = self.loader.batch_size, self.loader.arrays
        for i in range(_batches(len(idx), bs, self.loader.drop_last)):
            part = idx[i * bs:(i + 1) * bs]
            yield _tree.map(lambda x, p=part: x.index_select(0, p.to(x.device)), arrays)


def _shuffles(loader: Any) -> bool:
    from torch.utils.data import RandomSampler, SequentialSampler

    if isinstance(loader.sampler, RandomSampler):
        return True
    if isinstance(loader.sampler, SequentialSampler):
        return False
    raise TypeError(
        f"loader: expected a DataLoader with the default sampler (shuffle=True or False), got "
        f"sampler={type(loader.sampler).__name__}. HINT: functrain shards by replacing the "
        "sampler; with a sampler of your own, shard it by rank yourself and pass the loader "
        "through functrain.distributed.presharded(loader).")


def _rebuild_dataloader(loader: Any, sampler: ShardSampler) -> Any:
    from torch.utils.data import BatchSampler, DataLoader

    if type(loader.batch_sampler) is not BatchSampler or loader.batch_size is None:
        raise TypeError(
            "loader: expected a DataLoader with batch_size set and no batch_sampler, got "
            f"batch_sampler={type(loader.batch_sampler).__name__}. HINT: shard a custom batch "
            "sampler by rank yourself and pass the loader through "
            "functrain.distributed.presharded(loader).")
    kwargs = dict(batch_size=loader.batch_size, sampler=sampler,
                  num_workers=loader.num_workers, collate_fn=loader.collate_fn,
                  pin_memory=loader.pin_memory, drop_last=loader.drop_last,
                  timeout=loader.timeout, worker_init_fn=loader.worker_init_fn,
                  multiprocessing_context=loader.multiprocessing_context,
                  generator=loader.generator, persistent_workers=loader.persistent_workers,
                  pin_memory_device=loader.pin_memory_device)
    if loader.num_workers > 0:
        kwargs["prefetch_factor"] = loader.prefetch_factor
    if hasattr(loader, "in_order"):
        kwargs["in_order"] = loader.in_order
    return DataLoader(loader.dataset, **kwargs)


class _Presharded:
    """A loader the user has sharded by rank: `shard` passes it through unchanged."""

    def __init__(self, loader: Any) -> None:
        self.loader = loader

    def __iter__(self) -> Iterator[Any]:
        return iter(self.loader)

    def __len__(self) -> int:
        return len(self.loader)

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.loader, "set_epoch"):
            self.loader.set_epoch(epoch)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.__dict__["loader"], name)


def presharded(loader: Any) -> Any:
    """Declare that ``loader`` already yields this rank's share (for iterable loaders).

    functrain cannot shard an iterable-style loader (a stream has no indices to split), so it
    refuses one in a multi-rank run rather than train every rank on the same data. Shard the
    stream yourself (e.g. skip all but every ``world_size``-th record, starting at ``rank``)
    and wrap the loader with this function to say so. Every rank must still yield the same
    number of batches per epoch.

    Example:
        >>> batches = [1, 2, 3]
        >>> list(presharded(batches))
        [1, 2, 3]
    """
    return loader if isinstance(loader, _Presharded) else _Presharded(loader)


def shard(loader: Any, *, even: bool = True, rank: int | None = None,
          world_size: int | None = None, seed: int = 0) -> Any:
    """This rank's share of ``loader``: a `ShardedLoader` (or ``loader`` itself on one rank).

    Shards a `functrain.data.ArrayLoader` (keeping its order: the global order is the
    unsharded loader's ``order(epoch)``) and a ``torch.utils.data.DataLoader`` over a
    map-style dataset with the default sampler (rebuilt with a `ShardSampler`: shuffling
    follows ``DistributedSampler``'s ``randperm(seed + epoch)``, not the loader's own
    generator). The batch size stays the per-rank batch.

    Args:
        loader: the loader to shard.
        even: pad the epoch to equal shares (training; every rank runs the same number of
            steps), or give each example to exactly one rank (evaluation).
        rank: this rank; default `functrain.distributed.rank`.
        world_size: the number of ranks; default `functrain.distributed.world_size`.
        seed: the shuffling seed of a DataLoader's shards (an ArrayLoader keeps its own).

    Returns:
        A `ShardedLoader`; ``loader`` itself when ``world_size == 1``, or when it was wrapped
        with `presharded` or is already sharded.

    Raises:
        TypeError: for an iterable-style loader, a list of batches, or a DataLoader with a
            custom sampler or batch sampler; the HINT says how to shard it yourself.

    Example:
        >>> import torch, functrain as ft
        >>> base = ft.data.ArrayLoader(torch.arange(8), batch_size=2)
        >>> [b.tolist() for b in ft.distributed.shard(base, rank=0, world_size=2)]
        [[0, 2], [4, 6]]
    """
    world_size = _world_size() if world_size is None else world_size
    rank = _rank() if rank is None else rank
    check_int("world_size", world_size, minimum=1)
    check_int("rank", rank, minimum=0)
    if rank >= world_size:
        raise ValueError(f"rank: expected an int < world_size={world_size}, got {rank}.")
    if isinstance(loader, (_Presharded, ShardedLoader)) or world_size == 1:
        return loader
    if isinstance(loader, ArrayLoader):
        return ShardedLoader(loader, rank=rank, world_size=world_size, even=even)
    from torch.utils.data import DataLoader, IterableDataset

    if isinstance(loader, DataLoader) and not isinstance(loader.dataset, IterableDataset):
        if isinstance(loader.sampler, (ShardSampler, torch.utils.data.DistributedSampler)):
            return presharded(loader)
        return ShardedLoader(loader, rank=rank, world_size=world_size, even=even, seed=seed)
    what = ("a DataLoader over an IterableDataset" if isinstance(loader, DataLoader)
            else f"an object of type {type(loader).__name__}")
    raise TypeError(
        f"loader: expected a functrain.data.ArrayLoader or a DataLoader over a map-style "
        f"dataset to shard across {world_size} ranks, got {what}. Each rank would train on "
        "the same data. HINT: make the loader yield this rank's share "
        "(functrain.distributed.rank(), world_size()) and wrap it with "
        "functrain.distributed.presharded(loader).")
