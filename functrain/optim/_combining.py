"""Combining and restructuring transformations: `partition` (optax's current name for
`multi_transform`), `freeze`, `selective_transform` and `flatten`."""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping
from typing import Any

import torch

from functrain import tree as _tree

from ._base import (
    GradientTransformation,
    Params,
    Updates,
    call_update,
    set_to_zero,
    takes_extra_args,
)
from ._masking import masked, multi_transform


def partition(transforms: Mapping[Hashable, GradientTransformation],
              param_labels: Any | Callable[[Params], Any]) -> GradientTransformation:
    """Apply a different transformation to each labelled group of params (optax's name for
    `multi_transform`, which it is).

    Args:
        transforms: a mapping from label to transformation.
        param_labels: a pytree of labels with the params' structure (or a prefix of it), or a
            function of the params (or updates) returning one.

    Returns:
        A `GradientTransformation` with `MultiTransformState`.

    Example:
        >>> import torch
        >>> from functrain import optim
        >>> opt = optim.partition({"sgd": optim.sgd(1.0), "none": optim.set_to_zero()},
        ...                       lambda p: {k: "sgd" if v.ndim == 2 else "none"
        ...                                  for k, v in p.items()})
        >>> params = {"w": torch.ones(1, 1), "b": torch.ones(1)}
        >>> opt.update(params, opt.init(params))[0]
        {'w': tensor([[-1.]]), 'b': tensor([0.])}
    """
    return multi_transform(transforms, param_labels)


def freeze(mask: bool | Any) -> GradientTransformation:
    """Zero the updates where ``mask`` is True (frozen params); others pass unchanged.

    Args:
        mask: True (freeze everything), or a pytree of bools like the params (or a prefix).

    Returns:
        A `GradientTransformation` (`masked` `set_to_zero`).

    Example:
        >>> import torch
        >>> from functrain import optim
        >>> opt = optim.chain(optim.freeze({"w": True, "b": False}), optim.sgd(1.0))
        >>> params = {"w": torch.ones(1), "b": torch.ones(1)}
        >>> opt.update(params, opt.init(params))[0]
        {'w': tensor([-0.]), 'b': tensor([-1.])}
    """
    if isinstance(mask, bool):
        return set_to_zero() if mask else GradientTransformation(
            lambda params: (), lambda updates, state, params=None: (updates, state))
    return masked(set_to_zero(), mask)


def selective_transform(optimizer: GradientTransformation, *, freeze_mask: Any
                        ) -> GradientTransformation:
    """Run ``optimizer`` only on the params where ``freeze_mask`` is False; the frozen ones get
    zero updates and no optimizer state.

    Args:
        optimizer: the optimizer for the trained params.
        freeze_mask: a pytree of bools like the params, True where frozen.

    Returns:
        A `GradientTransformation` (a `partition`).

    Example:
        >>> import torch
        >>> from functrain import optim
        >>> opt = optim.selective_transform(optim.adam(0.1), freeze_mask={"w": True, "b": False})
        >>> params = {"w": torch.ones(1), "b": torch.ones(1)}
        >>> opt.update(params, opt.init(params))[0]
        {'w': tensor([0.]), 'b': tensor([-0.1000])}
    """
    labels = _tree.map(lambda m: "freeze" if m else "train", freeze_mask)
    return partition({"train": optimizer, "freeze": set_to_zero()}, labels)


def flatten(inner: GradientTransformation) -> GradientTransformation:
    """Run ``inner`` on all leaves concatenated into one vector (fewer, larger ops).

    Args:
        inner: the transformation to run on the flat vector.

    Returns:
        A `GradientTransformation` whose state is ``inner``'s state for the flat vector.

    Example:
        >>> import torch
        >>> from functrain import optim
        >>> opt = optim.flatten(optim.adam(0.1))
        >>> params = {"w": torch.ones(2, 2), "b": torch.ones(2)}
        >>> opt.init(params)[0].mu.shape
        torch.Size([6])
    """
    takes_extra = takes_extra_args(inner)

    def flat(tree: Any) -> torch.Tensor:
        return torch.cat([x.reshape(-1) for x in _tree.leaves(tree)])

    def unflat(like: Updates, vector: torch.Tensor) -> Updates:
        sizes = [x.numel() for x in _tree.leaves(like)]
        pieces = iter(torch.split(vector, sizes))
        return _tree.map(lambda x: next(pieces).reshape(x.shape), like)

    def init_fn(params: Params) -> Any:
        return inner.init(flat(params))

    def update_fn(updates: Updates, state: Any, params: Params | None = None,
                  **extra_args: Any):
        flat_params = None if params is None else flat(params)
        new, state = call_update(inner, takes_extra, flat(updates), state, flat_params,
                                 extra_args)
        return unflat(updates, new), state

    return GradientTransformation(init_fn, update_fn)
