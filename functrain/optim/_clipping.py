"""Clipping updates: element-wise (`clip`) and by the global norm (`clip_by_global_norm`)."""

from __future__ import annotations

import torch

from functrain import tree as _tree

from . import _checks
from ._base import EmptyState, GradientTransformation, Params, Updates


def clip(max_delta: float | torch.Tensor) -> GradientTransformation:
    """Clip every update element to ``[-max_delta, max_delta]``.

    Args:
        max_delta: the largest magnitude allowed, > 0 (a number or 0-d tensor).

    Returns:
        A stateless `GradientTransformation`.

    Raises:
        ValueError: if ``max_delta`` is not positive.

    Example:
        >>> import torch
        >>> from functrain import optim
        >>> optim.clip(1.0).update({"w": torch.tensor([-3.0, 0.5, 2.0])}, optim.EmptyState())[0]
        {'w': tensor([-1.0000,  0.5000,  1.0000])}
    """
    _checks.positive("max_delta", max_delta)

    def init_fn(params: Params) -> EmptyState:
        del params
        return EmptyState()

    def update_fn(updates: Updates, state: EmptyState, params: Params | None = None):
        _checks.update_inputs(updates, params)
        if isinstance(max_delta, torch.Tensor):
            def one(g):
                bound = max_delta.to(g.dtype)
                return torch.clamp(g, -bound, bound)
        else:
            def one(g):
                return torch.clamp(g, -max_delta, max_delta)
        return _tree.map(one, updates), state

    return GradientTransformation(init_fn, update_fn)


def clip_by_global_norm(max_norm: float | torch.Tensor) -> GradientTransformation:
    """Rescale all updates together so that their global L2 norm is at most ``max_norm``.

    If ``norm = global_norm(updates)`` exceeds ``max_norm``, every update is multiplied by
    ``max_norm / norm``; otherwise the updates are unchanged. This is optax's rule, branch-free
    (``torch.where``) so it compiles into one graph. ``torch.nn.utils.clip_grad_norm_``
    multiplies by ``max_norm / (norm + 1e-6)`` instead, so the two differ by about
    ``1e-6 / norm`` relative when clipping.

    Args:
        max_norm: the largest global norm allowed, > 0 (a number or 0-d tensor).

    Returns:
        A stateless `GradientTransformation`.

    Raises:
        ValueError: if ``max_norm`` is not positive.

    Example:
        >>> import torch
        >>> from functrain import optim
        >>> opt = optim.clip_by_global_norm(1.0)
        >>> updates, _ = opt.update({"a": torch.tensor([3.0]), "b": torch.tensor([4.0])},
        ...                         optim.EmptyState())
        >>> updates
        {'a': tensor([0.6000]), 'b': tensor([0.8000])}
    """
    _checks.positive("max_norm", max_norm, hint=" HINT: to turn clipping off, leave "
                     "clip_by_global_norm out of the chain.")

    def init_fn(params: Params) -> EmptyState:
        del params
        return EmptyState()

    def update_fn(updates: Updates, state: EmptyState, params: Params | None = None):
        _checks.update_inputs(updates, params)
        norm = _tree.global_norm(updates)
        factor = torch.where(norm < max_norm, 1.0, max_norm / norm)
        return _tree.map(lambda g: g * factor.to(g.dtype), updates), state

    return GradientTransformation(init_fn, update_fn)
