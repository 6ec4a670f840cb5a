"""Constraints on updates: `zero_nans` (replace NaNs) and `keep_params_nonnegative`."""

from __future__ import annotations

from typing import NamedTuple

import torch

from functrain import tree as _tree

from . import _checks
from ._base import EmptyState, GradientTransformation, Params, Updates, device_of
from ._transforms import _NO_PARAMS


class ZeroNansState(NamedTuple):
    """State of `zero_nans`: per leaf, a 0-d bool, whether the last update had a NaN there.

    Example:
        >>> import torch
        >>> from functrain import optim
        >>> optim.zero_nans().init({"w": torch.zeros(2)})
        ZeroNansState(found_nan={'w': tensor(False)})
    """

    found_nan: dict


def zero_nans() -> GradientTransformation:
    """Replace NaNs in the updates by 0 and record, per leaf, whether there were any.

    Returns:
        A `GradientTransformation` with `ZeroNansState`.

    Example:
        >>> import torch
        >>> from functrain import optim
        >>> opt = optim.zero_nans()
        >>> grads = {"w": torch.tensor([1.0, float("nan")])}
        >>> updates, state = opt.update(grads, opt.init(grads))
        >>> updates["w"], state.found_nan["w"]
        (tensor([1., 0.]), tensor(True))
    """

    def init_fn(params: Params) -> ZeroNansState:
        device = device_of(params)
        return ZeroNansState(found_nan=_tree.map(
            lambda p: torch.zeros((), dtype=torch.bool, device=device), params))

    def update_fn(updates: Updates, state: ZeroNansState, params: Params | None = None):
        _checks.update_inputs(updates, params)
        found = _tree.map(lambda g: torch.isnan(g).any(), updates)
        return (_tree.map(lambda g: torch.where(torch.isnan(g), 0.0, g), updates),
                ZeroNansState(found_nan=found))

    return GradientTransformation(init_fn, update_fn)


def keep_params_nonnegative() -> GradientTransformation:
    """Shorten updates that would make a param negative so that it lands on exactly 0.

    Put it last in a chain (it sees the final updates). The params must start non-negative.

    Returns:
        A stateless `GradientTransformation`; it needs ``params`` at update.

    Example:
        >>> import torch
        >>> from functrain import optim
        >>> params = {"w": torch.tensor([1.0, 1.0])}
        >>> opt = optim.keep_params_nonnegative()
        >>> opt.update({"w": torch.tensor([-3.0, -0.5])}, opt.init(params), params)[0]
        {'w': tensor([-1.0000, -0.5000])}
    """

    def init_fn(params: Params) -> EmptyState:
        del params
        return EmptyState()

    def update_fn(updates: Updates, state: EmptyState, params: Params | None = None):
        if params is None:
            raise ValueError(_NO_PARAMS.format(name="keep_params_nonnegative"))
        _checks.update_inputs(updates, params)
        return _tree.map(lambda u, p: torch.where(p + u < 0, -p, u), updates, params), state

    return GradientTransformation(init_fn, update_fn)
