"""Clipping updates: element-wise (`clip`), by the global norm (`clip_by_global_norm`), per leaf
(`clip_by_block_rms`) and per unit relative to the params (`adaptive_grad_clip`)."""

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
    _checks.positive("max_norm", max_norm, hint="to turn clipping off, leave "
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


def global_norm(updates: Updates) -> torch.Tensor:
    """The L2 norm of all leaves together (optax's ``global_norm``), a 0-d tensor in float32 or
    the widest float dtype among the leaves; no host sync.

    Args:
        updates: a pytree of tensors.

    Returns:
        A 0-d tensor.

    Example:
        >>> import torch
        >>> from functrain import optim
        >>> optim.global_norm({"a": torch.tensor([3.0]), "b": torch.tensor([4.0])})
        tensor(5.)
    """
    return _tree.global_norm(updates)


def clip_by_block_rms(threshold: float | torch.Tensor) -> GradientTransformation:
    """Rescale each leaf so that its root mean square is at most ``threshold``.

    Args:
        threshold: the largest RMS allowed per leaf, > 0.

    Returns:
        A stateless `GradientTransformation`.

    Raises:
        ValueError: if ``threshold`` is not positive.

    Example:
        >>> import torch
        >>> from functrain import optim
        >>> opt = optim.clip_by_block_rms(1.0)
        >>> opt.update({"w": torch.tensor([3.0, -3.0]), "b": torch.tensor([0.5])},
        ...            optim.EmptyState())[0]
        {'w': tensor([ 1., -1.]), 'b': tensor([0.5000])}
    """
    _checks.positive("threshold", threshold)

    def init_fn(params: Params) -> EmptyState:
        del params
        return EmptyState()

    def update_fn(updates: Updates, state: EmptyState, params: Params | None = None):
        _checks.update_inputs(updates, params)

        def one(u):
            denom = torch.clamp(torch.sqrt(torch.mean(u * u)) / threshold, min=1.0)
            return u / denom

        return _tree.map(one, updates), state

    return GradientTransformation(init_fn, update_fn)


def _unitwise_norm(x: torch.Tensor, axis) -> torch.Tensor:
    """optax's ``unitwise_norm``: per output unit for matrices and convolution kernels."""
    sq = x * x
    if axis is not None:
        norm = sq.sum(dim=axis, keepdim=True)
    elif x.squeeze().ndim <= 1:
        norm = sq.sum().reshape([1] * x.ndim)
    elif x.ndim in (2, 3):
        norm = sq.sum(dim=0, keepdim=True)
    elif x.ndim == 4:
        norm = sq.sum(dim=(0, 1, 2), keepdim=True)
    elif x.ndim == 5:
        norm = sq.sum(dim=(0, 1, 2, 3), keepdim=True)
    else:
        raise ValueError(f"adaptive_grad_clip: expected params of rank 1 to 5, got shape "
                         f"{tuple(x.shape)}. HINT: pass axis= to name the reduction axes.")
    return torch.sqrt(norm).expand(x.shape)


def adaptive_grad_clip(clipping: float, eps: float = 1e-3,
                       axis: int | tuple[int, ...] | None = None) -> GradientTransformation:
    """Adaptive gradient clipping (Brock et al., 2021): clip each unit's gradient to
    ``clipping * max(|param unit|, eps)``.

    Units follow optax's layout conventions (``axis=None``): a vector is one unit; a matrix's
    and a 3-d tensor's units are reduced over dimension 0; a 4-d (HWIO) kernel's over
    dimensions 0-2. ``axis`` replaces these for every leaf: for torch's ``(out, in)`` Linear
    weights, ``masked(adaptive_grad_clip(c, axis=1), mask_of_the_weights)``.

    Args:
        clipping: the largest ratio of gradient norm to parameter norm, > 0.
        eps: parameter norms below this count as this, >= 0.
        axis: the reduction axes of a unit (``None``: optax's conventions above).

    Returns:
        A stateless `GradientTransformation`; it needs ``params`` at update.

    Example:
        >>> import torch
        >>> from functrain import optim
        >>> params = {"w": torch.tensor([3.0, 4.0])}
        >>> opt = optim.adaptive_grad_clip(0.1)
        >>> opt.update({"w": torch.tensor([6.0, 8.0])}, opt.init(params), params)[0]
        {'w': tensor([0.3000, 0.4000])}
    """
    _checks.positive("clipping", clipping)
    _checks.non_negative("eps", eps)

    def init_fn(params: Params) -> EmptyState:
        del params
        return EmptyState()

    def update_fn(updates: Updates, state: EmptyState, params: Params | None = None):
        if params is None:
            raise ValueError("adaptive_grad_clip: expected params, got None. HINT: pass the "
                             "params as the third argument of update: "
                             "opt.update(grads, state, params).")
        _checks.update_inputs(updates, params)

        def one(g, p):
            g_norm = _unitwise_norm(g, axis)
            max_norm = clipping * torch.clamp(_unitwise_norm(p, axis), min=eps)
            clipped = g * (max_norm / torch.clamp(g_norm, min=1e-6))
            return torch.where(g_norm < max_norm, g, clipped)

        return _tree.map(one, updates, params), state

    return GradientTransformation(init_fn, update_fn)
