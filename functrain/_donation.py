"""Donation: a state handed to the runner is consumed, like a donated buffer in JAX.

The runner writes the new values into the old tensors (so the compiled step updates memory in
place) and hands back a new state object over those tensors. The old object is then poisoned:
any use of its fields raises `DonatedStateError` instead of silently showing updated values.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from ._state import TrainState, _fields
from .tree import data_fields, register_fields

__all__ = ["DonatedStateError"]


class DonatedStateError(RuntimeError):
    """A state was used after it was donated to the runner.

    Example:
        >>> import functrain as ft
        >>> issubclass(ft.DonatedStateError, RuntimeError)
        True
    """


_MESSAGE = (
    "this TrainState was donated to the runner, which has reused its memory for the next "
    "state. HINT: use the state the runner returned (`state, metrics = step(state, batch)`, "
    "`state = fit(...)`), or pass donate=False to keep old states alive.")


class _DonatedMixin:
    """Mixed into the class of a donated state: reading any of its fields raises."""

    def __getattribute__(self, name: str) -> Any:
        if name in type(self)._ft_donated_fields:
            raise DonatedStateError(f"state.{name}: {_MESSAGE}")
        return object.__getattribute__(self, name)

    def __repr__(self) -> str:
        return f"<donated {type(self).__mro__[2].__name__}>"


_DONATED_TYPES: dict[type, type] = {}


def _donated_type(cls: type) -> type:
    if cls not in _DONATED_TYPES:
        _DONATED_TYPES[cls] = type(f"Donated{cls.__name__}", (_DonatedMixin, cls),
                                   {"_ft_donated_fields": frozenset(_fields(cls)[0])})
    return _DONATED_TYPES[cls]


def is_donated(state: Any) -> bool:
    return isinstance(state, _DonatedMixin)


def check_not_donated(state: Any, name: str = "state") -> None:
    if isinstance(state, _DonatedMixin):
        raise DonatedStateError(f"{name}: {_MESSAGE}")


def poison(old: Any) -> None:
    """Make every use of ``old``'s fields raise `DonatedStateError` (TrainState only)."""
    if isinstance(old, TrainState) and not isinstance(old, _DonatedMixin):
        object.__setattr__(old, "__class__", _donated_type(type(old)))


def write_back(old: Any, new: Any) -> None:
    """Copy every tensor of ``new`` into the matching tensor of ``old`` (inside the graph).

    Runs while tracing the compiled step, so the copies become in-place writes of the graph's
    outputs into its inputs. A new leaf that is itself another old leaf (a swap) is cloned first,
    so the order of the copies cannot corrupt it.
    """
    pairs: list[tuple[torch.Tensor, torch.Tensor]] = []
    _pairs(old, new, pairs)
    # (identity tests, not id(): dynamo would guard on the ids and recompile every step)
    olds = [o for o, _ in pairs]
    fixed = [(o, n.clone() if (n is not o and any(n is x for x in olds)) else n)
             for o, n in pairs]
    for o, n in fixed:
        if n is not o:
            o.copy_(n)


def _pairs(o: Any, n: Any, out: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
    # A hand-written walk rather than optree: dynamo's optree polyfill (torch 2.14.1) fails on
    # empty dicts built inside the graph, and this walk only needs the containers states use.
    if isinstance(o, torch.Tensor):
        out.append((o, n))
    elif isinstance(o, dict):
        for k in o:
            _pairs(o[k], n[k], out)
    elif isinstance(o, (list, tuple)):
        for a, b in zip(o, n):
            _pairs(a, b, out)
    elif isinstance(o, TrainState):
        for name in _fields(type(o))[0]:
            _pairs(getattr(o, name), getattr(n, name), out)
    elif data_fields(o) is not None:
        for name in data_fields(o):
            _pairs(getattr(o, name), getattr(n, name), out)
    elif o is not None:
        raise TypeError(
            f"write_back: no fields known for {type(o).__name__}. HINT: call "
            "functrain._donation.remember_nodes(tree) outside the compiled function first.")


def remember_nodes(tree: Any) -> None:
    """Record the field names of every dataclass node in ``tree`` (call outside the graph).

    Dynamo cannot trace ``dataclasses.fields`` on objects built inside the graph, so the
    runner records them before the first compile and `_pairs` only looks them up.
    """
    if isinstance(tree, torch.Tensor):
        return
    if isinstance(tree, dict):
        for v in tree.values():
            remember_nodes(v)
    elif isinstance(tree, (list, tuple)):
        for v in tree:
            remember_nodes(v)
    elif dataclasses.is_dataclass(tree) and not isinstance(tree, type):
        names = (_fields(type(tree))[0] if isinstance(tree, TrainState)
                 else tuple(f.name for f in dataclasses.fields(tree)))
        register_fields(type(tree), names)
        for name in names:
            remember_nodes(getattr(tree, name))
