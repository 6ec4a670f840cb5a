"""Quick runs: re-iterable views of a loader (Lightning's ``limit_*_batches``,
``overfit_batches`` and ``fast_dev_run``).

``itertools.islice(loader, n)`` is an iterator: it is exhausted after the first epoch, and
`functrain.fit` then stops with "loader yielded no batches in epoch 1". The views here are
re-iterable, forward ``set_epoch`` (so `functrain.data.ArrayLoader`'s seeded order and an exact
resume keep working) and have a ``len`` when the loader has one, so the progress bar and
``epochs`` count them correctly.

=====================================  ===============================================
Lightning ``Trainer(...)``             functrain
=====================================  ===============================================
``limit_train_batches=10``             ``fit(step, state, take(loader, 10), ...)``
``limit_val_batches=0.25``             ``eval_loader=take(eval_loader, 0.25)``
``overfit_batches=2``                  ``fit(step, state, overfit_batches(loader, 2), ...)``
``fast_dev_run=True``                  ``fit(step, state, take(loader, 1), epochs=1,
                                       eval_loader=take(eval_loader, 1), loggers=False)``
=====================================  ===============================================

Example:
    >>> import torch, functrain as ft
    >>> loader = ft.data.ArrayLoader(torch.arange(10), batch_size=2)
    >>> short = take(loader, 2)
    >>> [b.tolist() for b in short], [b.tolist() for b in short], len(short)
    ([[0, 1], [2, 3]], [[0, 1], [2, 3]], 2)
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable, Iterator
from typing import Any

from ._errors import check_int, check_number, describe

__all__ = ["overfit_batches", "take"]


def _check_loader(loader: Any, name: str = "loader") -> None:
    if not isinstance(loader, Iterable):
        raise TypeError(f"{name}: expected an iterable of batches (a DataLoader, an ArrayLoader,"
                        f" a list...), got {describe(loader)}.")
    if isinstance(loader, Iterator):  # a generator, islice, iter(x): one pass only
        raise TypeError(f"{name}: expected a re-iterable loader, got an iterator "
                        f"({type(loader).__name__}), which is exhausted after one pass. HINT: "
                        "pass the DataLoader (or a list of batches) itself.")


def loader_len(loader: Any) -> int | None:
    """``len(loader)``, or ``None`` for a loader without a length."""
    try:
        return len(loader)
    except TypeError:
        return None


def _count(loader: Any, n: int | float, name: str) -> int:
    """``n`` batches as an int: an int as is, a fraction of ``len(loader)`` rounded down
    (at least 1, as Lightning's ``limit_*_batches`` does)."""
    if isinstance(n, numbers.Integral) and not isinstance(n, bool):
        return check_int(name, n, minimum=1)
    check_number(name, n, low=0.0, high=1.0, low_open=True,
                 hint="an int is a number of batches, a float in (0, 1] a fraction of them")
    total = loader_len(loader)
    if total is None:
        raise TypeError(f"{name}: a fraction ({n!r}) needs a loader with a length, got "
                        f"{type(loader).__name__}, which has none. HINT: pass a number of "
                        "batches instead (an int).")
    return max(1, math.floor(n * total))


class _Take:
    """The first ``n`` batches of every pass over ``loader`` (see `take`)."""

    def __init__(self, loader: Any, n: int) -> None:
        self.loader = loader
        self.n = n

    def __len__(self) -> int:
        total = loader_len(self.loader)
        if total is None:
            raise TypeError(f"take({type(self.loader).__name__}, {self.n}): the loader has "
                            "no length, so neither has this view.")
        return min(self.n, total)

    def set_epoch(self, epoch: int) -> None:
        """Forward the epoch to the loader (if it has ``set_epoch``)."""
        if hasattr(self.loader, "set_epoch"):
            self.loader.set_epoch(epoch)

    def __iter__(self) -> Iterator[Any]:
        for i, batch in enumerate(self.loader):
            yield batch
            if i + 1 >= self.n:
                break  # leave the loader here: a DataLoader's workers stop with its iterator

    def __repr__(self) -> str:
        return f"take({self.loader!r}, {self.n})"


class _Overfit:
    """The same ``n`` batches every pass (see `overfit_batches`)."""

    def __init__(self, loader: Any, n: int) -> None:
        self.loader = loader
        self.n = n
        self._batches: list[Any] | None = None

    def _fill(self) -> list[Any]:
        if self._batches is None:
            batches = list(_Take(self.loader, self.n))
            if not batches:
                raise ValueError("overfit_batches: expected the loader to yield at least one "
                                 "batch, got none.")
            self._batches = batches
        return self._batches

    def __len__(self) -> int:
        total = loader_len(self.loader)
        return min(self.n, total) if total is not None else len(self._fill())

    def set_epoch(self, epoch: int) -> None:
        """Accepted and ignored: every epoch yields the same batches."""

    def __iter__(self) -> Iterator[Any]:
        return iter(self._fill())

    def __repr__(self) -> str:
        return f"overfit_batches({self.loader!r}, {self.n})"


def take(loader: Iterable[Any], n: int | float) -> Iterable[Any]:
    """A re-iterable view of ``loader`` that yields only the first ``n`` batches of each pass.

    Lightning's ``limit_train_batches`` / ``limit_val_batches``: pass it to `functrain.fit` as
    the training or evaluation loader. Every pass starts a fresh pass over ``loader``, so a
    shuffling loader gives different batches each epoch (as Lightning's limit does);
    ``set_epoch`` is forwarded, and ``len`` is ``min(n, len(loader))``. ``take(loader, 1)``
    for training and evaluation is Lightning's ``fast_dev_run``.

    Args:
        loader: a re-iterable loader (a DataLoader, `functrain.data.ArrayLoader`, a list).
        n: an int ``>= 1``: that many batches; a float in ``(0, 1]``: that fraction of
            ``len(loader)``, rounded down, at least one batch.

    Returns:
        The view (re-iterable, with ``set_epoch`` and ``len``).

    Raises:
        TypeError: ``loader`` is not iterable, or is an iterator (exhausted after one pass),
            or ``n`` is a fraction and ``loader`` has no length.
        ValueError: ``n`` is out of range.

    Example:
        >>> import torch, functrain as ft
        >>> loader = ft.data.ArrayLoader(torch.arange(8), batch_size=2)
        >>> [b.tolist() for b in take(loader, 0.5)]
        [[0, 1], [2, 3]]
    """
    _check_loader(loader)
    return _Take(loader, _count(loader, n, "n"))


def overfit_batches(loader: Iterable[Any], n: int | float = 1) -> Iterable[Any]:
    """The first ``n`` batches of ``loader``, the same ones every epoch: a training set to
    overfit (Lightning's ``overfit_batches``).

    A step that cannot drive the loss on a couple of batches towards zero has a bug; this
    makes the check one argument. The batches are read from ``loader`` once (at the first
    pass) and kept; later passes replay them in the same order. Use the same view as the
    evaluation loader to watch the evaluation metrics reach the training ones.

    Args:
        loader: a re-iterable loader.
        n: an int ``>= 1`` or a fraction in ``(0, 1]`` of ``len(loader)`` (see `take`).

    Returns:
        A re-iterable of the kept batches (with ``len``, and a ``set_epoch`` that does nothing).

    Raises:
        TypeError / ValueError: as `take`; ``ValueError`` if ``loader`` yields no batch.

    Example:
        >>> import torch, functrain as ft
        >>> loader = ft.data.ArrayLoader(torch.arange(8), batch_size=2, shuffle=True, seed=0)
        >>> fixed = overfit_batches(loader, 2)
        >>> [b.tolist() for b in fixed] == [b.tolist() for b in fixed]
        True
    """
    _check_loader(loader)
    return _Overfit(loader, _count(loader, n, "n"))
