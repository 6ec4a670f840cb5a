"""Where a loader is in its data, so that a resumed run sees exactly the batches it would have.

`fit` asks `LoaderOrder` to start each epoch and, in a checkpoint, to record the position.
Loaders fall in four kinds:

- ``"stateful"``: a loader with ``state_dict()`` / ``load_state_dict()``, such as torchdata's
  ``StatefulDataLoader``: its state goes into the checkpoint and is loaded on resume, so the
  loader itself continues mid-epoch (the batches already trained on are not read again).
- ``"set_epoch"``: a loader whose order is a function of the epoch it is told
  (`functrain.data.ArrayLoader`, or anything with ``set_epoch(epoch)``), and a list or tuple
  of batches: the epoch is replayed and the batches already trained on are skipped.
- ``"dataloader"``: a ``torch.utils.data.DataLoader`` over a map-style dataset with the
  default sampler (``shuffle=True`` or ``False``) or a sampler with ``set_epoch``: each epoch
  gets a generator seeded from the run's data seed and the epoch, as ``DistributedSampler``
  does with ``set_epoch``; it orders the epoch and seeds the workers (``base_seed``), so the
  epoch, and every worker's random state in it, can be replayed.
- ``"iterable"``: anything else. Its order cannot be replayed; a resume warns so, every time.

Example:
    >>> import torch
    >>> from torch.utils.data import DataLoader, TensorDataset
    >>> loader = DataLoader(TensorDataset(torch.arange(6)), batch_size=2, shuffle=True)
    >>> order = LoaderOrder(loader, seed=0)
    >>> order.kind
    'dataloader'
    >>> order.start_epoch(3); a = [b[0].tolist() for b in loader]
    >>> order.start_epoch(3); b = [b[0].tolist() for b in loader]
    >>> order.close()
    >>> a == b, loader.generator is None
    (True, True)
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import Any

import torch

__all__ = ["LoaderOrder", "epoch_seed"]

_MASK64 = (1 << 64) - 1


def epoch_seed(seed: int, epoch: int) -> int:
    """A seed for one epoch, a function of the run's data seed and the epoch (splitmix64).

    Example:
        >>> epoch_seed(0, 1) == epoch_seed(0, 1) != epoch_seed(0, 2)
        True
    """
    z = (int(seed) * 0x9E3779B97F4A7C15 + int(epoch) + 1) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return (z ^ (z >> 31)) >> 1  # non-negative, fits torch.Generator.manual_seed


class LoaderOrder:
    """How `fit` starts each epoch of ``loader`` so that a resumed run can replay it.

    Args:
        loader: the training loader.
        seed: the run's data seed (saved in the checkpoint, so a resumed run keeps it).

    Attributes:
        kind: ``"stateful"``, ``"set_epoch"``, ``"dataloader"`` or ``"iterable"``.
        exact: whether a resumed run sees exactly the batches of the uninterrupted one.
        why_not: for ``exact=False``, why (for the resume warning); else ``None``.
        why_not_mid_epoch: why a resume *mid-epoch* may not be exact, else ``None``: also
            set for a stateful loader whose worker processes would restart from their seeds
            (its dataset does not save its own state).
    """

    def __init__(self, loader: Any, seed: int) -> None:
        self.loader = loader
        self.seed = int(seed)
        self.kind, self.why_not = _classify(loader)
        self.exact = self.why_not is None
        self.why_not_mid_epoch = self.why_not or _stateful_workers_restart(loader, self.kind)
        self._set_sampler = False
        if self.kind == "dataloader":
            from torch.utils.data import RandomSampler

            sampler = loader.sampler
            self._set_sampler = (type(sampler) is RandomSampler
                                 and sampler.generator is None)

    @property
    def skips_batches(self) -> bool:
        """Whether resuming mid-epoch reads and drops the batches already trained on
        (``False`` for stateful loaders, which continue by themselves)."""
        return self.kind != "stateful"

    def start_epoch(self, epoch: int) -> None:
        """Set the loader up for ``epoch``; call before ``iter(loader)``."""
        loader = self.loader
        if self.kind == "set_epoch" and hasattr(loader, "set_epoch"):
            loader.set_epoch(epoch)
        elif self.kind == "dataloader" and self.exact:
            g = torch.Generator()
            g.manual_seed(epoch_seed(self.seed, epoch))
            loader.generator = g  # the workers' base_seed is drawn from it
            if self._set_sampler:
                loader.sampler.generator = g  # then the permutation
            elif hasattr(loader.sampler, "set_epoch"):
                loader.sampler.set_epoch(epoch)

    def state_dict(self) -> dict[str, Any] | None:
        """The loader's own state for a checkpoint (stateful loaders), else ``None``."""
        if self.kind != "stateful":
            return None
        return self.loader.state_dict()

    def load_state_dict(self, state: Mapping[str, Any] | None) -> None:
        """Give a stateful loader back its state (before ``iter(loader)``)."""
        if self.kind == "stateful" and state is not None:
            self.loader.load_state_dict(state)

    def close(self) -> None:
        """Give the loader back as it was (no generator of functrain's left on it)."""
        if self.kind == "dataloader" and self.exact:
            self.loader.generator = None
            if self._set_sampler:
                self.loader.sampler.generator = None


def _classify(loader: Any) -> tuple[str, str | None]:
    if callable(getattr(loader, "state_dict", None)) and callable(
            getattr(loader, "load_state_dict", None)):
        return "stateful", None
    if hasattr(loader, "set_epoch") or isinstance(loader, (list, tuple)):
        return "set_epoch", None
    data = sys.modules.get("torch.utils.data")
    if data is not None and isinstance(loader, data.DataLoader):
        return "dataloader", _dataloader_not_exact(loader, data)
    return "iterable", (
        f"the loader (a {type(loader).__name__}) is an iterable whose order functrain cannot "
        "replay. HINT: use a torch DataLoader over a map-style dataset, torchdata's "
        "StatefulDataLoader, functrain.data.ArrayLoader, or give the loader set_epoch(epoch)")


def _stateful_workers_restart(loader: Any, kind: str) -> str | None:
    dataset = getattr(loader, "dataset", None)
    if kind != "stateful" or not getattr(loader, "num_workers", 0) or (
            callable(getattr(dataset, "state_dict", None))
            and callable(getattr(dataset, "load_state_dict", None))):
        return None
    return ("the stateful loader continues mid-epoch, but its worker processes restart from "
            "their seeds, so random augmentation in the dataset draws other numbers. HINT: "
            "give the dataset state_dict()/load_state_dict() that save its generators "
            "(torchdata's Stateful), or resume at epoch boundaries")


def _dataloader_not_exact(loader: Any, data: Any) -> str | None:
    if isinstance(loader.dataset, data.IterableDataset):
        return ("the DataLoader reads an IterableDataset, whose order is its own. HINT: "
                "use a map-style dataset, or torchdata's StatefulDataLoader")
    if loader.generator is not None:
        return ("the DataLoader has its own generator=, whose state functrain does not "
                "track. HINT: leave generator=None; fit seeds each epoch from the run's seed")
    sampler = loader.sampler
    plain = type(sampler) in (data.RandomSampler, data.SequentialSampler)
    if type(sampler) is data.RandomSampler and sampler.generator is not None:
        return ("the DataLoader's RandomSampler has its own generator, whose state functrain "
                "does not track. HINT: leave its generator=None")
    if not plain and not hasattr(sampler, "set_epoch"):
        return (f"the DataLoader's sampler ({type(sampler).__name__}) has no set_epoch(epoch)"
                ", so its order cannot be replayed. HINT: give it set_epoch, as "
                "DistributedSampler has")
    batch_sampler = loader.batch_sampler
    if batch_sampler is not None and type(batch_sampler) is not data.BatchSampler and (
            not hasattr(batch_sampler, "set_epoch")):
        return (f"the DataLoader's batch_sampler ({type(batch_sampler).__name__}) has no "
                "set_epoch(epoch), so its order cannot be replayed")
    if loader.num_workers > 0 and loader.persistent_workers:
        return ("the DataLoader keeps persistent_workers, seeded once per process, so a "
                "resumed run's workers draw other random numbers. HINT: "
                "persistent_workers=False")
    return None

