"""Donation: a state handed to the runner is consumed, like a donated buffer in JAX.

The runner writes the new values into the old tensors (so the compiled step updates memory in
place) and hands back a new state object over those tensors. The old object is then poisoned:
any use of its fields raises `DonatedStateError` instead of silently showing updated values.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import optree
import torch

from .tree import NAMESPACE, data_fields, register_fields

__all__ = ["DonatedStateError", "check_not_donated", "is_donated", "poison", "remember_nodes",
           "state_fields", "write_back"]


class DonatedStateError(RuntimeError):
    """A state was used after it was donated to the runner.

    Example:
        >>> import functrain as ft
        >>> issubclass(ft.DonatedStateError, RuntimeError)
        True
    """


_MESSAGE = (
    "this state was donated to the runner, which has reused its memory for the next "
    "state. HINT: use the state the runner returned (`state, metrics = step(state, batch)`, "
    "`state = fit(...)`), or pass donate=False to keep old states alive.")


def state_fields(obj: Any) -> tuple[str, ...] | None:
    """The data field names of ``obj`` if it is a pytree node with named fields, else None.

    Any class registered as a pytree node in the ``"functrain"`` optree namespace whose
    flatten names its children by attribute (as `functrain.TrainState`, its subclasses and
    forks of it do), and any dataclass, qualifies. The names are recorded on the class
    (`functrain.tree.register_fields`), so code traced by Dynamo can read them.
    """
    names = data_fields(obj)
    if names is not None:
        return names
    if obj is None or isinstance(obj, (torch.Tensor, dict, list, tuple, type)):
        return None
    try:
        _, _, entries, _ = optree.tree_flatten_one_level(obj, namespace=NAMESPACE)
    except ValueError:  # a leaf to optree
        entries = None
    if entries is not None and all(isinstance(e, str) and hasattr(obj, e) for e in entries):
        found = tuple(entries)
    elif dataclasses.is_dataclass(obj):
        found = tuple(f.name for f in dataclasses.fields(obj) if not f.metadata.get("static"))
    else:
        return None
    register_fields(type(obj), found)
    return found


class _DonatedMixin:
    """Mixed into the class of a donated state: reading any of its fields raises."""

    _ft_donated_fields: frozenset[str] = frozenset()

    def __getattribute__(self, name: str) -> Any:
        if name in type(self)._ft_donated_fields:
            raise DonatedStateError(f"state.{name}: {_MESSAGE}")
        return object.__getattribute__(self, name)

    def __repr__(self) -> str:
        return f"<donated {type(self).__mro__[2].__name__}>"


_DONATED_TYPES: dict[type, type] = {}


def _donated_type(cls: type, names: tuple[str, ...]) -> type:
    if cls not in _DONATED_TYPES:
        _DONATED_TYPES[cls] = type(f"Donated{cls.__name__}", (_DonatedMixin, cls),
                                   {"_ft_donated_fields": frozenset(names)})
    return _DONATED_TYPES[cls]


def is_donated(state: Any) -> bool:
    """Whether ``state`` was donated (its fields raise `DonatedStateError`)."""
    return isinstance(state, _DonatedMixin)


def check_not_donated(state: Any, name: str = "state") -> None:
    """Raise `DonatedStateError` if ``state`` was donated."""
    if isinstance(state, _DonatedMixin):
        raise DonatedStateError(f"{name}: {_MESSAGE}")


def poison(old: Any) -> None:
    """Make every use of ``old``'s data fields raise `DonatedStateError`.

    Works on any state node with named fields (see `state_fields`) whose class can be swapped
    for a subclass (a class with a ``__dict__``, or slots); plain dicts, lists and tuples are
    left as they are.
    """
    if isinstance(old, _DonatedMixin):
        return
    donated = _DONATED_TYPES.get(type(old))  # a state's fields depend on its class only
    if donated is None:
        names = state_fields(old)
        if not names:
            return
        donated = _donated_type(type(old), names)
    try:
        object.__setattr__(old, "__class__", donated)
    except TypeError:  # a layout Python cannot swap (e.g. a NamedTuple): left usable
        pass


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
    elif data_fields(o) is not None:
        for name in data_fields(o):
            _pairs(getattr(o, name), getattr(n, name), out)
    elif o is not None:
        raise TypeError(
            f"the compiled step cannot update a {type(o).__name__} in place: its fields are "
            "unknown. HINT: register the class as a pytree node in the 'functrain' optree "
            "namespace, with its fields named by attribute (as functrain.TrainState does), or "
            "make it a dataclass.")


def remember_nodes(tree: Any) -> None:
    """Record the field names of every node with named fields in ``tree`` (outside the graph).

    Dynamo cannot trace ``dataclasses.fields`` or optree on objects built inside the graph, so
    the runner records them before the first compile and `write_back` only looks them up.
    """
    if isinstance(tree, torch.Tensor):
        return
    if isinstance(tree, dict):
        for v in tree.values():
            remember_nodes(v)
    elif isinstance(tree, (list, tuple)):
        for v in tree:
            remember_nodes(v)
    else:
        for name in state_fields(tree) or ():
            remember_nodes(getattr(tree, name))
