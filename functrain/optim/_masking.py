"""Applying transformations to part of the params: `masked` and `multi_transform`."""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping
from typing import Any, NamedTuple

from functrain import tree as _tree

from . import _checks
from ._base import GradientTransformation, OptState, Params, Updates, call_update, takes_extra_args


class MaskedNode(NamedTuple):
    """Stands in for a masked-out subtree: a pytree node with no leaves.

    The inner transformation of `masked` sees these where the mask is ``False``, so it holds no
    state for those params.

    Example:
        >>> from functrain import tree
        >>> tree.leaves({"w": 1, "b": MaskedNode()})
        [1]
    """


class MaskedState(NamedTuple):
    """State of `masked`: the inner transformation's state, over the masked tree.

    Example:
        >>> import torch
        >>> from functrain import optim
        >>> opt = optim.masked(optim.trace(0.9), {"w": True, "b": False})
        >>> opt.init({"w": torch.zeros(1), "b": torch.zeros(1)})
        MaskedState(inner_state=TraceState(trace={'w': tensor([0.]), 'b': MaskedNode()}))
    """

    inner_state: OptState


def _resolve_mask(mask: Any, tree: Any, name: str) -> Any:
    """Evaluate a callable mask and check it is a tree of bools matching ``tree``'s prefix."""
    mask_tree = mask(tree) if callable(mask) else mask
    if all(isinstance(m, bool) for m in _tree.leaves(mask_tree)):
        return mask_tree
    for path, m in _tree.leaves_with_path(mask_tree, name):
        if not isinstance(m, bool):
            raise TypeError(
                f"{path}: expected a Python bool, got {_checks.describe(m)}. HINT: a mask is a "
                "pytree of True/False with the params' structure (or a function returning one).")
    return mask_tree


def _mask_tree(tree: Any, mask_tree: Any, name: str) -> Any:
    """Replace the subtrees of ``tree`` where ``mask_tree`` is False with `MaskedNode`."""
    try:
        return _tree.map(lambda m, x: x if m else MaskedNode(), mask_tree, tree)
    except ValueError:
        _tree.assert_same_structure(tree, mask_tree, name)
        raise


def masked(inner: GradientTransformation,
           mask: Any | Callable[[Params], Any]) -> GradientTransformation:
    """Apply ``inner`` only where ``mask`` is True; other updates pass through unchanged.

    Args:
        inner: the transformation to apply to the selected leaves.
        mask: a pytree of bools with the params' structure (or a prefix of it, so ``True`` may
            stand for a whole subtree), or a function returning one; it is called with the
            params in ``init`` and with the updates in ``update``.

    Returns:
        A `GradientTransformation` with `MaskedState`. The inner state covers only the
        selected leaves (the others are `MaskedNode`).

    Raises:
        TypeError: if a mask leaf is not a Python bool.
        functrain.tree.TreeMismatchError: if the mask does not match the params' structure.

    Example:
        >>> import torch
        >>> from functrain import optim
        >>> opt = optim.masked(optim.scale(0.0), {"w": True, "b": False})
        >>> params = {"w": torch.ones(1), "b": torch.ones(1)}
        >>> opt.update(params, opt.init(params))[0]
        {'w': tensor([0.]), 'b': tensor([1.])}
    """

    takes_extra = takes_extra_args(inner)

    def init_fn(params: Params) -> MaskedState:
        mask_tree = _resolve_mask(mask, params, "mask")
        return MaskedState(inner_state=inner.init(_mask_tree(params, mask_tree, "mask")))

    def update_fn(updates: Updates, state: MaskedState, params: Params | None = None,
                  **extra_args: Any):
        mask_tree = _resolve_mask(mask, updates, "mask")
        masked_updates = _mask_tree(updates, mask_tree, "mask")
        masked_params = None if params is None else _mask_tree(params, mask_tree, "mask")
        new_masked, inner_state = call_update(inner, takes_extra, masked_updates,
                                              state.inner_state, masked_params, extra_args)
        new_updates = _tree.map(lambda m, new, old: new if m else old, mask_tree,
                                new_masked, updates)
        return new_updates, MaskedState(inner_state=inner_state)

    return GradientTransformation(init_fn, update_fn)


class MultiTransformState(NamedTuple):
    """State of `multi_transform`: a dict from label to that group's (masked) state.

    Example:
        >>> import torch
        >>> from functrain import optim
        >>> opt = optim.multi_transform({"a": optim.sgd(0.1), "b": optim.adam(0.1)},
        ...                             {"w": "a", "v": "b"})
        >>> sorted(opt.init({"w": torch.zeros(1), "v": torch.zeros(1)}).inner_states)
        ['a', 'b']
    """

    inner_states: dict[Hashable, OptState]


def multi_transform(transforms: Mapping[Hashable, GradientTransformation],
                    param_labels: Any | Callable[[Params], Any]) -> GradientTransformation:
    """Apply a different transformation to each labelled group of params.

    Args:
        transforms: a mapping from label to transformation.
        param_labels: a pytree of labels with the params' structure (or a prefix of it), or a
            function of the params (or updates) returning one.

    Returns:
        A `GradientTransformation` with `MultiTransformState`; each group's state holds only
        that group's leaves.

    Raises:
        ValueError: if a label has no transformation; names the leaf path.

    Example:
        >>> import torch
        >>> from functrain import optim
        >>> opt = optim.multi_transform({"fast": optim.sgd(1.0), "frozen": optim.set_to_zero()},
        ...                             {"w": "fast", "b": "frozen"})
        >>> params = {"w": torch.ones(1), "b": torch.ones(1)}
        >>> opt.update(params, opt.init(params))[0]
        {'w': tensor([-1.]), 'b': tensor([0.])}
    """
    if not isinstance(transforms, Mapping):
        raise TypeError(f"transforms: expected a mapping from label to GradientTransformation, "
                        f"got {_checks.describe(transforms)}.")

    def labels_of(tree: Any) -> Any:
        labels = param_labels(tree) if callable(param_labels) else param_labels
        if all(label in transforms for label in _tree.leaves(labels)):
            return labels
        for path, label in _tree.leaves_with_path(labels, "param_labels"):
            if label not in transforms:
                raise ValueError(
                    f"{path}: expected a label among {sorted(transforms, key=repr)}, got "
                    f"{label!r}. HINT: add a transformation for it to `transforms`.")
        return labels

    def mask_for(labels: Any, group: Hashable) -> Any:
        return _tree.map(lambda label: label == group, labels)

    def init_fn(params: Params) -> MultiTransformState:
        labels = labels_of(params)
        return MultiTransformState({
            group: masked(t, mask_for(labels, group)).init(params)
            for group, t in transforms.items()})

    def update_fn(updates: Updates, state: MultiTransformState, params: Params | None = None,
                  **extra_args: Any):
        labels = labels_of(updates)
        new_states = {}
        for group, t in transforms.items():
            updates, new_states[group] = masked(t, mask_for(labels, group)).update(
                updates, state.inner_states[group], params, **extra_args)
        return updates, MultiTransformState(new_states)

    return GradientTransformation(init_fn, update_fn)
