"""Rescalings by norms: of the params (`scale_by_param_block_rms`, `scale_by_param_block_norm`,
`scale_by_trust_ratio` for LARS/LAMB/Fromage), of the updates (`normalize_by_update_norm`), and
gradient centralization (`centralize`).

All are stateless and follow optax's math; "block" means one leaf.
"""

from __future__ import annotations

import torch

from functrain import tree as _tree

from . import _checks
from ._base import EmptyState, GradientTransformation, Params, Updates
from ._transforms import _NO_PARAMS


def _empty(params: Params) -> EmptyState:
    del params
    return EmptyState()


def safe_norm(x: torch.Tensor, min_norm: float) -> torch.Tensor:
    """``max(|x|_2, min_norm)`` as optax's ``safe_norm`` (0-d, in x's dtype)."""
    norm = torch.linalg.vector_norm(x)
    return torch.where(norm <= min_norm, torch.as_tensor(min_norm, dtype=norm.dtype,
                                                         device=norm.device), norm)


def safe_rms(x: torch.Tensor, min_rms: float) -> torch.Tensor:
    """``max(rms(x), min_rms)`` as optax's ``safe_root_mean_squares``."""
    rms = torch.sqrt(torch.mean(x * x))
    return torch.where(rms <= min_rms, torch.as_tensor(min_rms, dtype=rms.dtype,
                                                       device=rms.device), rms)


def _param_scaled(name: str, scale_fn, min_scale: float) -> GradientTransformation:
    def update_fn(updates: Updates, state: EmptyState, params: Params | None = None):
        if params is None:
            raise ValueError(_NO_PARAMS.format(name=name))
        _checks.update_inputs(updates, params)
        return _tree.map(lambda u, p: u * scale_fn(p, min_scale).to(u.dtype), updates,
                         params), state

    return GradientTransformation(_empty, update_fn)


def scale_by_param_block_norm(min_scale: float = 1e-3) -> GradientTransformation:
    """Multiply each leaf's update by ``max(|param|_2, min_scale)`` of its param.

    Args:
        min_scale: the smallest scale, >= 0.

    Returns:
        A stateless `GradientTransformation`; it needs ``params`` at update.

    Example:
        >>> import torch
        >>> from functrain import optim
        >>> params = {"w": torch.tensor([3.0, 4.0])}
        >>> opt = optim.scale_by_param_block_norm()
        >>> opt.update({"w": torch.ones(2)}, opt.init(params), params)[0]
        {'w': tensor([5., 5.])}
    """
    _checks.non_negative("min_scale", min_scale)
    return _param_scaled("scale_by_param_block_norm", safe_norm, min_scale)


def scale_by_param_block_rms(min_scale: float = 1e-3) -> GradientTransformation:
    """Multiply each leaf's update by ``max(rms(param), min_scale)`` (Adafactor's relative step).

    Args:
        min_scale: the smallest scale, >= 0.

    Returns:
        A stateless `GradientTransformation`; it needs ``params`` at update.

    Example:
        >>> import torch
        >>> from functrain import optim
        >>> params = {"w": torch.tensor([3.0, -3.0])}
        >>> opt = optim.scale_by_param_block_rms()
        >>> opt.update({"w": torch.ones(2)}, opt.init(params), params)[0]
        {'w': tensor([3., 3.])}
    """
    _checks.non_negative("min_scale", min_scale)
    return _param_scaled("scale_by_param_block_rms", safe_rms, min_scale)


def scale_by_trust_ratio(min_norm: float = 0.0, trust_coefficient: float = 1.0,
                         eps: float = 0.0) -> GradientTransformation:
    """Scale each leaf's update by ``trust_coefficient * |param| / (|update| + eps)`` (LARS,
    LAMB, Fromage); by 1 where either norm is 0.

    Args:
        min_norm: norms below this count as this, >= 0.
        trust_coefficient: multiplies the ratio.
        eps: added to the update's norm, >= 0.

    Returns:
        A stateless `GradientTransformation`; it needs ``params`` at update.

    Example:
        >>> import torch
        >>> from functrain import optim
        >>> params = {"w": torch.tensor([3.0, 4.0])}
        >>> opt = optim.scale_by_trust_ratio()
        >>> opt.update({"w": torch.tensor([0.0, 0.5])}, opt.init(params), params)[0]
        {'w': tensor([0., 5.])}
    """
    _checks.non_negative("min_norm", min_norm)
    _checks.number("trust_coefficient", trust_coefficient)
    _checks.non_negative("eps", eps)

    def update_fn(updates: Updates, state: EmptyState, params: Params | None = None):
        if params is None:
            raise ValueError(_NO_PARAMS.format(name="scale_by_trust_ratio"))
        _checks.update_inputs(updates, params)

        def one(u, p):
            p_norm = safe_norm(p, min_norm)
            u_norm = safe_norm(u, min_norm)
            ratio = trust_coefficient * p_norm / (u_norm + eps)
            ratio = torch.where((p_norm == 0) | (u_norm == 0), 1.0, ratio)
            return u * ratio.to(u.dtype)

        return _tree.map(one, updates, params), state

    return GradientTransformation(_empty, update_fn)


def normalize_by_update_norm(scale_factor: float = 1.0, eps: float = 1e-6
                             ) -> GradientTransformation:
    """Divide all updates by ``(global_norm(updates) + eps) / scale_factor``.

    Args:
        scale_factor: the norm of the result (up to ``eps``).
        eps: added to the norm, >= 0.

    Returns:
        A stateless `GradientTransformation`.

    Example:
        >>> import torch
        >>> from functrain import optim
        >>> opt = optim.normalize_by_update_norm(eps=0.0)
        >>> opt.update({"a": torch.tensor([3.0]), "b": torch.tensor([4.0])}, opt.init(None))[0]
        {'a': tensor([0.6000]), 'b': tensor([0.8000])}
    """
    _checks.number("scale_factor", scale_factor)
    _checks.non_negative("eps", eps)

    def update_fn(updates: Updates, state: EmptyState, params: Params | None = None):
        _checks.update_inputs(updates, params)
        denom = (_tree.global_norm(updates) + eps) / scale_factor
        return _tree.map(lambda g: g / denom.to(g.dtype), updates), state

    return GradientTransformation(_empty, update_fn)


def centralize() -> GradientTransformation:
    """Gradient centralization (Yong et al., 2020): subtract, from every leaf of rank >= 2, its
    mean over all dimensions but the first.

    Returns:
        A stateless `GradientTransformation`.

    Example:
        >>> import torch
        >>> from functrain import optim
        >>> opt = optim.centralize()
        >>> opt.update({"w": torch.tensor([[1.0, 3.0]]), "b": torch.tensor([1.0, 3.0])},
        ...            opt.init(None))[0]
        {'w': tensor([[-1.,  1.]]), 'b': tensor([1., 3.])}
    """

    def update_fn(updates: Updates, state: EmptyState, params: Params | None = None):
        _checks.update_inputs(updates, params)

        def one(g):
            if g.ndim < 2:
                return g
            return g - g.mean(dim=tuple(range(1, g.ndim)), keepdim=True)

        return _tree.map(one, updates), state

    return GradientTransformation(_empty, update_fn)
