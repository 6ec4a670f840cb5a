"""Adafactor's factored second moments (Shazeer & Stern, 2018): `scale_by_factored_rms`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import torch

from functrain import _errors

from . import _checks
from ._base import GradientTransformation, Params, Updates, zero_count
from ._transforms import _NO_PARAMS, per_leaf


class FactoredState(NamedTuple):
    """State of `scale_by_factored_rms`: step ``count``; per leaf, the row and column
    statistics ``v_row`` and ``v_col`` (factored leaves) or the full ``v`` (the others); unused
    entries are 1-element placeholders, as in optax.

    Example:
        >>> import torch
        >>> from functrain import optim
        >>> state = optim.scale_by_factored_rms(min_dim_size_to_factor=2).init(
        ...     {"w": torch.zeros(3, 4)})
        >>> state.v_row["w"].shape, state.v_col["w"].shape, state.v["w"].shape
        (torch.Size([3]), torch.Size([4]), torch.Size([1]))
    """

    count: torch.Tensor
    v_row: Updates
    v_col: Updates
    v: Updates


def factored_dims(shape: tuple[int, ...], factored: bool,
                  min_dim_size_to_factor: int) -> tuple[int, int] | None:
    """The two largest dimensions ``(d1, d0)`` (second largest, largest) if both reach
    ``min_dim_size_to_factor``; ``None`` when the leaf is not factored (optax's rule)."""
    if not factored or len(shape) < 2:
        return None
    order = sorted(range(len(shape)), key=lambda i: shape[i])
    if shape[order[-2]] < min_dim_size_to_factor:
        return None
    return order[-2], order[-1]


def _default_decay(step: torch.Tensor, exponent: float, dtype: torch.dtype) -> torch.Tensor:
    t = (step + 1).to(dtype)
    return 1.0 - t ** (-exponent)


def scale_by_factored_rms(factored: bool = True, decay_rate: float = 0.8, step_offset: int = 0,
                          min_dim_size_to_factor: int = 128, epsilon: float = 1e-30,
                          decay_rate_fn: Callable[[torch.Tensor, float], Any] | None = None
                          ) -> GradientTransformation:
    """Divide updates by a factored estimate of the root mean square of past gradients.

    For a leaf whose two largest dimensions are at least ``min_dim_size_to_factor``, keep
    running means of ``g**2`` over rows and over columns and use their outer product (divided
    by the mean) as the second moment: memory ``O(n + m)`` instead of ``O(nm)``. Other leaves
    keep the full running mean. The decay at step t is ``1 - (t + 1)**-decay_rate`` (a running
    average that forgets less and less). optax computes that decay in float32 whatever the
    params' dtype; here it is computed in the leaf's dtype (at least float32), which is what
    ``torch.optim.Adafactor`` does and what float64 parity with it needs. Pass
    ``decay_rate_fn`` to change it.

    Args:
        factored: factor the second moment of eligible leaves.
        decay_rate: the decay exponent, >= 0.
        step_offset: subtracted from the step count in the decay.
        min_dim_size_to_factor: leaves factor only if their two largest dimensions are at
            least this large, an int >= 1.
        epsilon: added to ``g**2``, >= 0.
        decay_rate_fn: ``fn(step, decay_rate) -> decay`` (``None``: the rule above).

    Returns:
        A `GradientTransformation` with `FactoredState`; it needs ``params`` at update.

    Example:
        >>> import torch
        >>> from functrain import optim
        >>> opt = optim.scale_by_factored_rms(min_dim_size_to_factor=1)
        >>> params = {"w": torch.zeros(2, 2)}
        >>> updates, _ = opt.update({"w": torch.full((2, 2), 3.0)}, opt.init(params), params)
        >>> updates["w"]  # the first step divides by |g|
        tensor([[1., 1.],
                [1., 1.]])
    """
    _checks.non_negative("decay_rate", decay_rate)
    _errors.check_int("step_offset", step_offset)
    _errors.check_int("min_dim_size_to_factor", min_dim_size_to_factor, minimum=1)
    _checks.non_negative("epsilon", epsilon)
    if decay_rate_fn is not None and not callable(decay_rate_fn):
        raise TypeError(f"decay_rate_fn: expected a function (step, decay_rate) -> decay, got "
                        f"{_errors.describe(decay_rate_fn)}.")

    def dims(p: torch.Tensor) -> tuple[int, int] | None:
        return factored_dims(tuple(p.shape), factored, min_dim_size_to_factor)

    def init_fn(params: Params) -> FactoredState:
        _checks.float_leaves(params, "params")
        from functrain import tree as _tree

        def pick(p, which):
            d = dims(p)
            if d is None:
                return torch.zeros_like(p) if which == "v" else p.new_zeros(1)
            d1, d0 = d
            if which == "v_row":
                return p.new_zeros([s for i, s in enumerate(p.shape) if i != d0])
            if which == "v_col":
                return p.new_zeros([s for i, s in enumerate(p.shape) if i != d1])
            return p.new_zeros(1)

        return FactoredState(count=zero_count(params),
                             v_row=_tree.map(lambda p: pick(p, "v_row"), params),
                             v_col=_tree.map(lambda p: pick(p, "v_col"), params),
                             v=_tree.map(lambda p: pick(p, "v"), params))

    def update_fn(updates: Updates, state: FactoredState, params: Params | None = None):
        if params is None:
            raise ValueError(_NO_PARAMS.format(name="scale_by_factored_rms"))
        _checks.update_inputs(updates, params)
        step = state.count - step_offset
        decays: dict[torch.dtype, Any] = {}

        def decay_for(dtype):
            dt = torch.promote_types(dtype, torch.float32)
            if dt not in decays:
                decays[dt] = (_default_decay(step, decay_rate, dt) if decay_rate_fn is None
                              else decay_rate_fn(step, decay_rate))
            return decays[dt]

        def one(g, p, v_row, v_col, v):
            d = dims(p)
            decay = decay_for(g.dtype)
            g2 = g * g + epsilon
            if d is None:
                v_new = (decay * v + (1 - decay) * g2).to(v.dtype)
                return (g * v_new.rsqrt()).to(g.dtype), None, v_row, v_col, v_new
            d1, d0 = d
            row = (decay * v_row + (1 - decay) * g2.mean(dim=d0)).to(v_row.dtype)
            col = (decay * v_col + (1 - decay) * g2.mean(dim=d1)).to(v_col.dtype)
            reduced_d1 = d1 - 1 if d1 > d0 else d1
            row_factor = (row / row.mean(dim=reduced_d1, keepdim=True)).rsqrt()
            col_factor = col.rsqrt()
            u = g * row_factor.unsqueeze(d0) * col_factor.unsqueeze(d1)
            return u.to(g.dtype), None, row, col, v

        u, _, v_row, v_col, v = per_leaf(one, updates, params, state.v_row, state.v_col, state.v)
        return u, FactoredState(count=state.count + 1, v_row=v_row, v_col=v_col, v=v)

    return GradientTransformation(init_fn, update_fn)
