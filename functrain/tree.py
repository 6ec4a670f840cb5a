"""Pytree utilities: a thin layer over `optree` with errors that name the leaf path.

Every function here works on any nesting of dicts, lists, tuples, NamedTuples and the functrain
types registered under the ``"functrain"`` optree namespace (`functrain.TrainState`, optimizer
states). Leaves are usually tensors.

When two trees that must agree do not, the error names the first offending leaf by its path,
written as Python code that reaches it::

    grads['layers.3.weight']: expected shape (64, 32), got (32, 64).

Example:
    >>> import torch, functrain as ft
    >>> params = {"w": torch.ones(2, 3), "b": torch.zeros(3)}
    >>> ft.tree.map(lambda x: 2 * x, params)["w"].sum().item()
    12.0
    >>> round(ft.tree.global_norm(params).item() ** 2, 4)
    6.0
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Callable
from typing import Any

import optree
import torch

from ._errors import describe

__all__ = [
    "NAMESPACE",
    "TreeMismatchError",
    "assert_same_structure",
    "assert_trees_match",
    "cast",
    "global_norm",
    "leaves",
    "leaves_with_path",
    "map",
    "map_with_path",
    "structure",
    "zeros_like",
]

NAMESPACE = "functrain"
"""The optree namespace under which functrain registers its pytree types."""


class TreeMismatchError(ValueError):
    """Two pytrees that must agree (structure, shape or dtype) do not.

    The message names the first offending leaf by its path, e.g.
    ``grads['layers.3.weight']: expected shape (64, 32), got (32, 64).``

    Example:
        >>> import torch, functrain as ft
        >>> try:
        ...     ft.tree.assert_trees_match({"w": torch.ones(2)}, {"w": torch.ones(3)}, name="grads")
        ... except ft.tree.TreeMismatchError as e:
        ...     print(e)
        grads['w']: expected shape (2,), got (3,).
    """


def leaves(tree: Any) -> list[Any]:
    """Return the leaves of ``tree`` in a fixed order (sorted dict keys).

    Example:
        >>> leaves({"b": 2, "a": [1, 3]})
        [1, 3, 2]
    """
    if torch.compiler.is_compiling():
        # Dynamo's optree polyfill (torch 2.14.1) fails on an empty dict node in tree_leaves
        # ("Unexpected type in sourceless builder"), and its tree_map visits dicts in insertion
        # order where optree sorts the keys; older Dynamo (torch 2.9, which torch_xla 2.9
        # needs) cannot trace optree at all. Walk the tree by hand, in optree's order.
        out: list[Any] = []
        _traced_leaves(tree, out)
        return out
    return optree.tree_leaves(tree, namespace=NAMESPACE)


def register_fields(cls: type, names: Any,
                    rebuild: Callable[[Any, dict[str, Any]], Any] | None = None) -> None:
    """Record the data field names of a pytree node class (outside of tracing).

    Dynamo cannot trace ``dataclasses.fields`` (nor, before torch 2.10, any optree call); code
    that walks trees inside a compiled step reads the names recorded here instead. They live on
    the class itself (a global registry would be a guarded global, and registering a new class
    would recompile every step). ``rebuild(node, {name: value})`` makes a node of the same kind
    with new field values; the default is ``dataclasses.replace`` for dataclasses, else
    ``cls(**values)``.
    """
    type.__setattr__(cls, "_ft_data_fields", (cls, tuple(names), rebuild))


def data_fields(obj: Any) -> tuple[str, ...] | None:
    """The names `register_fields` recorded for ``type(obj)`` (not a base class), or None."""
    entry = getattr(type(obj), "_ft_data_fields", None)
    if entry is not None and entry[0] is type(obj):
        return entry[1]
    return None


def _rebuild(node: Any, values: dict[str, Any]) -> Any:
    rebuild = type(node)._ft_data_fields[2]
    if rebuild is not None:
        return rebuild(node, values)
    if dataclasses.is_dataclass(node):
        return dataclasses.replace(node, **values)
    return type(node)(**values)


_SCALAR_LEAVES = (bool, int, float, complex, str, bytes, torch.dtype, torch.device)


def _sorted_keys(d: dict[Any, Any]) -> list[Any]:
    """The keys in optree's order: sorted; keys of mixed types by type name, then value;
    OrderedDicts in insertion order."""
    if type(d) is collections.OrderedDict:
        return list(d)
    keys = list(d)
    # No try/except around sorted(): torch 2.9's Dynamo fails inside on a TypeError.
    if all(type(k) is type(keys[0]) for k in keys):
        return sorted(keys)
    return sorted(keys, key=lambda k: (type(k).__module__, type(k).__qualname__, k))


_DICTS = (dict, collections.OrderedDict, collections.defaultdict)


def _mismatch(path: str, what: str) -> ValueError:
    return ValueError(f"tree.map: the trees differ at {path}: {what}.")


def _traced_map(fn: Callable[..., Any], x: Any, rest: list[Any], path: str = "tree") -> Any:
    """`map` in plain Python, for use while Dynamo traces: leaves are visited in optree's
    order (sorted dict keys), dicts are paired by key and rebuilt in ``x``'s insertion order;
    trees in ``rest`` must match ``x`` down to its leaves (below them they may go deeper)."""
    if isinstance(x, torch.Tensor) or type(x) in _SCALAR_LEAVES:
        return fn(x, *rest)
    if x is None:
        if any(r is not None for r in rest):
            raise _mismatch(path, "None against a value")
        return None
    t = type(x)
    if any(type(r) is not t for r in rest):
        raise _mismatch(path, f"{t.__name__} against {[type(r).__name__ for r in rest]}")
    if t in _DICTS:
        if any(len(r) != len(x) or any(k not in r for k in x) for r in rest):
            raise _mismatch(path, "different dict keys")
        done = {k: _traced_map(fn, x[k], [r[k] for r in rest], f"{path}[{k!r}]")
                for k in _sorted_keys(x)}
        out = {k: done[k] for k in x}
        if t is collections.defaultdict:
            return collections.defaultdict(x.default_factory, out)
        return collections.OrderedDict(list(out.items())) if t is collections.OrderedDict else out
    if t in (list, tuple) or (isinstance(x, tuple) and hasattr(x, "_fields")):
        if any(len(r) != len(x) for r in rest):
            raise _mismatch(path, "different lengths")
        children = [_traced_map(fn, v, [r[i] for r in rest], f"{path}[{i}]")
                    for i, v in enumerate(x)]
        return t(children) if t in (list, tuple) else t(*children)
    names = data_fields(x)
    if names is not None:
        return _rebuild(x, {n: _traced_map(fn, getattr(x, n), [getattr(r, n) for r in rest],
                                           f"{path}.{n}") for n in names})
    return optree.tree_map(fn, x, *rest, namespace=NAMESPACE)


def _traced_leaves(x: Any, out: list[Any]) -> None:
    if isinstance(x, torch.Tensor) or type(x) in _SCALAR_LEAVES:
        out.append(x)
    elif x is None:
        pass
    elif type(x) in _DICTS:
        for k in _sorted_keys(x):
            _traced_leaves(x[k], out)
    elif type(x) in (list, tuple) or (isinstance(x, tuple) and hasattr(x, "_fields")):
        for v in x:
            _traced_leaves(v, out)
    elif data_fields(x) is not None:
        for name in data_fields(x):
            _traced_leaves(getattr(x, name), out)
    else:
        optree.tree_map(out.append, x, namespace=NAMESPACE)


def leaves_with_path(tree: Any, name: str = "tree") -> list[tuple[str, Any]]:
    """Return ``(path, leaf)`` pairs, each path written as code rooted at ``name``.

    Example:
        >>> leaves_with_path({"w": 1, "layers": [2]}, name="params")
        [("params['layers'][0]", 2), ("params['w']", 1)]
    """
    accessors, leaves_, _ = optree.tree_flatten_with_accessor(tree, namespace=NAMESPACE)
    return [(a.codify(name), leaf) for a, leaf in zip(accessors, leaves_)]


def structure(tree: Any) -> optree.PyTreeSpec:
    """Return the tree structure (an ``optree.PyTreeSpec``) of ``tree``.

    Example:
        >>> structure({"a": 1, "b": (2, 3)}).num_leaves
        3
    """
    return optree.tree_structure(tree, namespace=NAMESPACE)


def map(fn: Callable[..., Any], tree: Any, *rest: Any) -> Any:  # noqa: A001 - mirrors jax.tree.map
    """Apply ``fn`` to the leaves of ``tree`` (and the matching leaves of ``rest``).

    Args:
        fn: called as ``fn(leaf, *matching_leaves)``.
        tree: the pytree that fixes the structure.
        *rest: pytrees with the same structure as ``tree``.

    Returns:
        A pytree with ``tree``'s structure holding ``fn``'s results.

    Raises:
        TreeMismatchError: if a tree in ``rest`` differs in structure; names the first path.

    Example:
        >>> map(lambda a, b: a + b, {"x": 1, "y": 2}, {"x": 10, "y": 20})
        {'x': 11, 'y': 22}
    """
    if torch.compiler.is_compiling():  # see `leaves`
        return _traced_map(fn, tree, list(rest))
    try:
        return optree.tree_map(fn, tree, *rest, namespace=NAMESPACE)
    except ValueError:
        for i, other in enumerate(rest):
            assert_same_structure(tree, other, name=f"rest[{i}]")
        raise


def map_with_path(fn: Callable[..., Any], tree: Any, *rest: Any, name: str = "tree") -> Any:
    """Like `map`, but ``fn`` receives the leaf's path first: ``fn(path, leaf, *others)``.

    The path is a string of code rooted at ``name``, e.g. ``"params['fc.weight']"``.

    Example:
        >>> map_with_path(lambda p, x: p, {"w": 0}, name="params")
        {'w': "params['w']"}
    """
    for i, other in enumerate(rest):
        assert_same_structure(tree, other, name=f"rest[{i}]")
    return optree.tree_map_with_accessor(
        lambda acc, *xs: fn(acc.codify(name), *xs), tree, *rest, namespace=NAMESPACE
    )


def assert_same_structure(expected: Any, got: Any, name: str = "tree") -> None:
    """Raise `TreeMismatchError` naming the first path where ``got`` differs from ``expected``.

    Only the nesting (dict keys, sequence lengths, node types) is compared, not the leaves.

    Example:
        >>> try:
        ...     assert_same_structure({"a": 1, "b": 2}, {"a": 1}, name="grads")
        ... except TreeMismatchError as e:
        ...     print(e)
        grads: expected keys ['a', 'b'], got ['a']; missing ['b'].
    """
    if structure(expected) == structure(got):
        return
    raise TreeMismatchError(_first_structure_difference(expected, got, name))


def _first_structure_difference(expected: Any, got: Any, name: str) -> str:
    exp_spec = optree.tree_structure(expected, namespace=NAMESPACE)
    got_spec = optree.tree_structure(got, namespace=NAMESPACE)
    if exp_spec.is_leaf() or got_spec.is_leaf():
        if exp_spec.is_leaf() and got_spec.is_leaf():
            return f"{name}: expected a leaf, got a leaf (structures differ only in None-ness)."
        what_exp = "a leaf" if exp_spec.is_leaf() else f"a {type(expected).__name__} node"
        what_got = (f"a leaf ({describe(got)})" if got_spec.is_leaf()
                    else f"a {type(got).__name__} node")
        return f"{name}: expected {what_exp}, got {what_got}."
    if type(expected) is not type(got):
        return (f"{name}: expected a {type(expected).__name__}, got a {type(got).__name__}.")
    e_children, e_meta, e_entries = optree.tree_flatten_one_level(expected, namespace=NAMESPACE)[:3]
    g_children, g_meta, g_entries = optree.tree_flatten_one_level(got, namespace=NAMESPACE)[:3]
    if isinstance(expected, dict):
        e_keys, g_keys = sorted(expected, key=repr), sorted(got, key=repr)
        if e_keys != g_keys:
            missing = [k for k in e_keys if k not in got]
            extra = [k for k in g_keys if k not in expected]
            detail = []
            if missing:
                detail.append(f"missing {missing}")
            if extra:
                detail.append(f"unexpected {extra}")
            return f"{name}: expected keys {e_keys}, got {g_keys}; {', '.join(detail)}."
        for k in e_keys:
            sub = f"{name}[{k!r}]"
            if structure(expected[k]) != structure(got[k]):
                return _first_structure_difference(expected[k], got[k], sub)
    if len(e_children) != len(g_children):
        return (f"{name}: expected a {type(expected).__name__} of {len(e_children)} entries, "
                f"got {len(g_children)}.")
    if e_meta != g_meta:
        return f"{name}: node metadata differs: expected {e_meta!r}, got {g_meta!r}."
    for entry, e_child, g_child in zip(e_entries, e_children, g_children):
        if structure(e_child) != structure(g_child):
            sub = f"{name}.{entry}" if isinstance(entry, str) and not isinstance(
                expected, dict) else f"{name}[{entry!r}]"
            return _first_structure_difference(e_child, g_child, sub)
    return f"{name}: structures differ: expected {exp_spec}, got {got_spec}."


def assert_trees_match(
    expected: Any,
    got: Any,
    name: str = "tree",
    *,
    shape: bool = True,
    dtype: bool = True,
    device: bool = False,
) -> None:
    """Check that ``got`` has ``expected``'s structure and, leaf by leaf, its shapes and dtypes.

    Args:
        expected: the reference tree.
        got: the tree to check.
        name: how to name the root of ``got`` in the error.
        shape: compare tensor shapes.
        dtype: compare tensor dtypes.
        device: compare tensor devices.

    Raises:
        TreeMismatchError: names the first offending leaf path and what differs.

    Example:
        >>> import torch
        >>> try:
        ...     assert_trees_match({"w": torch.ones(2)}, {"w": torch.ones(2).double()}, "grads")
        ... except TreeMismatchError as e:
        ...     print(e)
        grads['w']: expected dtype torch.float32, got torch.float64.
    """
    e_leaves, e_spec = optree.tree_flatten(expected, namespace=NAMESPACE)
    g_leaves, g_spec = optree.tree_flatten(got, namespace=NAMESPACE)
    if e_spec != g_spec:
        assert_same_structure(expected, got, name)  # raises, naming the path
    if all(_leaf_matches(e, g, shape, dtype, device) for e, g in zip(e_leaves, g_leaves)):
        return  # the common case: no key paths built
    for (path, e), g in zip(leaves_with_path(expected, name), g_leaves):
        e_t, g_t = isinstance(e, torch.Tensor), isinstance(g, torch.Tensor)
        if e_t != g_t:
            raise TreeMismatchError(f"{path}: expected {describe(e)}, got {describe(g)}.")
        if not e_t:
            continue
        if shape and e.shape != g.shape:
            raise TreeMismatchError(
                f"{path}: expected shape {tuple(e.shape)}, got {tuple(g.shape)}.")
        if dtype and e.dtype != g.dtype:
            raise TreeMismatchError(f"{path}: expected dtype {e.dtype}, got {g.dtype}.")
        if device and e.device != g.device:
            raise TreeMismatchError(f"{path}: expected device {e.device}, got {g.device}.")


def _leaf_matches(e: Any, g: Any, shape: bool, dtype: bool, device: bool) -> bool:
    if type(e) is not type(g) and not (isinstance(e, torch.Tensor)
                                       and isinstance(g, torch.Tensor)):
        return False
    if not isinstance(e, torch.Tensor):
        return True
    return ((not shape or e.shape == g.shape) and (not dtype or e.dtype == g.dtype)
            and (not device or e.device == g.device))


def zeros_like(tree: Any) -> Any:
    """Return a tree of zero tensors shaped like ``tree``'s tensor leaves.

    Example:
        >>> import torch
        >>> zeros_like({"w": torch.ones(2)})
        {'w': tensor([0., 0.])}
    """
    return map(torch.zeros_like, tree)


def cast(tree: Any, dtype: torch.dtype | None, *, floating_only: bool = True) -> Any:
    """Cast the tensor leaves of ``tree`` to ``dtype``.

    Args:
        tree: a pytree of tensors.
        dtype: the target dtype; ``None`` returns ``tree`` unchanged.
        floating_only: cast only floating-point leaves, leaving integer and bool tensors
            (step counters, masks) alone.

    Example:
        >>> import torch
        >>> out = cast({"w": torch.ones(2), "n": torch.tensor(3)}, torch.bfloat16)
        >>> out["w"].dtype, out["n"].dtype
        (torch.bfloat16, torch.int64)
    """
    if dtype is None:
        return tree

    def one(x: Any) -> Any:
        if not isinstance(x, torch.Tensor):
            return x
        if floating_only and not x.is_floating_point():
            return x
        return x.to(dtype)

    return map(one, tree)


def global_norm(tree: Any) -> torch.Tensor:
    """Return the L2 norm of all tensor leaves together, as a 0-d float32 (or wider) tensor.

    Computed on device with no host sync; leaves of low precision are accumulated in float32.

    Example:
        >>> import torch
        >>> global_norm({"a": torch.tensor([3.0]), "b": torch.tensor([4.0])})
        tensor(5.)
    """
    ls = [x for x in leaves(tree) if isinstance(x, torch.Tensor)]
    if not ls:
        return torch.zeros(())
    dtype = torch.float32  # at least float32, and the widest float dtype among the leaves
    for x in ls:
        if x.is_floating_point():
            dtype = torch.promote_types(dtype, x.dtype)
    squares = [torch.sum(torch.square(x.to(dtype))) for x in ls]
    total = torch.stack(squares).sum()
    if _SQUARED_NORM_REDUCERS:  # a sharded optimizer's update: the whole tree's norm
        total = _SQUARED_NORM_REDUCERS[-1](total)
    return torch.sqrt(total)


# Pushed by `functrain.distributed`'s sharded optimizer around its inner update (and popped
# after): there each rank holds a shard of the tree, and the sum of squares is summed over the
# ranks, so `global_norm` (clip_by_global_norm...) is the norm of the whole, unsharded tree.
_SQUARED_NORM_REDUCERS: list[Any] = []


def _check_float_leaves(tree: Any, name: str) -> None:
    """Raise if any leaf of ``tree`` is not a floating-point tensor; names the leaf path."""
    for path, x in leaves_with_path(tree, name):
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{path}: expected a floating-point tensor, got {describe(x)}.")
        if not (x.is_floating_point() or x.is_complex()):
            raise TypeError(
                f"{path}: expected a floating-point tensor, got dtype {x.dtype}. "
                "HINT: integer and bool tensors cannot be optimized; keep them in buffers.")

