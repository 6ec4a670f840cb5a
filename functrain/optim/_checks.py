"""Eager argument and tree checks shared by the optimizer factories and updates.

Factories check their hyperparameters when called; updates check their trees on every call. The
tree checks run in Python over shapes and dtypes only, so under ``torch.compile`` they are traced
once and cost nothing afterwards. A hyperparameter that is already a tensor (as
`inject_hyperparams` passes them) is not checked: reading its value would sync with the device.
"""

from __future__ import annotations

import numbers
from typing import Any

import optree
import torch

from functrain import _errors
from functrain import tree as _tree
from functrain.tree import NAMESPACE


def describe(x: Any) -> str:
    """A short description of a value, for "expected X, got Y" messages (functrain's one
    vocabulary: `functrain._errors.describe`)."""
    return _errors.describe(x)


def _is_number(x: Any) -> bool:
    return isinstance(x, numbers.Real) and not isinstance(x, bool)


def _is_scalar_tensor(x: Any) -> bool:
    return isinstance(x, torch.Tensor) and x.ndim == 0 and (
        x.is_floating_point() or not x.dtype.is_complex)


def number(name: str, value: Any, *, low: float | None = None, high: float | None = None,
           low_open: bool = False, high_open: bool = True, hint: str = "") -> None:
    """Check that ``value`` is a real number (or a 0-d tensor, not checked further) in range.

    ``low``/``high`` bound the range; ``low_open``/``high_open`` exclude the bound itself;
    ``hint`` is the text after "HINT:" (`functrain._errors.check_number` words the error).
    """
    if _is_scalar_tensor(value):
        return
    _errors.check_number(name, value, low=low, high=high, low_open=low_open,
                         high_open=high_open, hint=hint)


def beta(name: str, value: Any) -> None:
    """Check a decay rate (``b1``, ``b2``, ``decay``, ``momentum``): a number in [0, 1)."""
    number(name, value, low=0.0, high=1.0,
           hint="decay rates are the weight of the old average, e.g. 0.9 or 0.999.")


def non_negative(name: str, value: Any) -> None:
    """Check a number that may be zero but not negative (``eps``, ``weight_decay``)."""
    number(name, value, low=0.0)


def positive(name: str, value: Any, hint: str = "") -> None:
    """Check a number that must be strictly positive (``max_norm``)."""
    number(name, value, low=0.0, low_open=True, hint=hint)


def scalar_or_schedule(name: str, value: Any) -> None:
    """Check a learning-rate-like argument: a non-negative number, 0-d tensor or a callable."""
    if callable(value) and not isinstance(value, torch.Tensor):
        return
    if not (_is_number(value) or _is_scalar_tensor(value)):
        raise TypeError(
            f"{name}: expected a number or a schedule (a callable of the step count), "
            f"got {describe(value)}. HINT: use e.g. 1e-3 or "
            "functrain.optim.cosine_decay_schedule(1e-3, decay_steps=1000).")
    number(name, value, low=0.0, hint="the learning rate is a step size (>= 0); the "
           "sign is flipped for you (gradient descent). To ascend, use scale(+lr).")


def dtype_or_none(name: str, value: Any) -> None:
    """Check an optional floating dtype argument (``mu_dtype``, ``accumulator_dtype``)."""
    if value is None:
        return
    if not isinstance(value, torch.dtype) or not value.is_floating_point:
        raise TypeError(f"{name}: expected a floating torch.dtype or None, got {describe(value)}.")


def float_leaves(tree: Any, name: str) -> None:
    """Raise if a leaf of ``tree`` is not a floating-point tensor; names the leaf path."""
    for x in _tree.leaves(tree):
        if not (isinstance(x, torch.Tensor) and x.is_floating_point()):
            break
    else:
        return
    for path, x in _tree.leaves_with_path(tree, name):
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{path}: expected a floating-point tensor, got {describe(x)}.")
        if not x.is_floating_point():
            raise TypeError(
                f"{path}: expected a floating-point tensor, got dtype {x.dtype}. HINT: integer "
                "and bool tensors cannot be optimized; keep them out of the params tree.")


def updates(updates_: Any, reference: Any, *, dtype: bool, ref_name: str = "params") -> None:
    """Check ``updates_`` against ``reference`` (params, or a state tree of the same shape).

    Compares structure and shapes (and dtypes if ``dtype``), and that every update leaf is a
    floating-point tensor. The passing case is one flatten and a Python loop; the error path
    names the first offending leaf.
    """
    bad: list[bool] = []

    def leaf(r: Any, u: Any) -> None:
        if not (isinstance(u, torch.Tensor) and isinstance(r, torch.Tensor)
                and u.is_floating_point() and u.shape == r.shape
                and (not dtype or u.dtype == r.dtype)):
            bad.append(True)

    try:
        if torch.compiler.is_compiling():  # functrain's own walk: see `functrain.tree.leaves`
            _tree._traced_map(leaf, reference, [updates_])
        else:
            optree.tree_map(leaf, reference, updates_, namespace=NAMESPACE)
    except (ValueError, KeyError, IndexError, AttributeError):
        bad.append(True)
    if not bad:
        return
    hint = (" HINT: updates (gradients) must have the structure, shapes and dtypes of "
            f"the {ref_name} tree.")
    if ref_name != "params":
        hint = (f" HINT: the optimizer state ({ref_name}) was created by init() for a "
                "differently shaped params tree; call init() again.")
    try:
        _tree.assert_trees_match(reference, updates_, "updates", dtype=dtype)
    except _tree.TreeMismatchError as e:
        raise _tree.TreeMismatchError(f"{e}{hint}") from None
    float_leaves(updates_, "updates")


def update_inputs(updates_: Any, params: Any) -> None:
    """The API-edge check of every ``update(updates, state, params)``."""
    if params is None:
        float_leaves(updates_, "updates")
    else:
        updates(updates_, params, dtype=True)
