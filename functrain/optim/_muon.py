"""Muon (Jordan et al., 2024): momentum orthogonalized by a Newton-Schulz iteration, for 2-D
weights, as ``torch.optim.Muon`` computes it; `muon` routes every other param to a fallback
optimizer (AdamW by default), the split torch's documentation prescribes."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import torch

from functrain import _errors
from functrain import tree as _tree

from . import _checks
from ._base import GradientTransformation, Params, ScalarOrSchedule, Updates, chain
from ._combining import partition
from ._transforms import add_decayed_weights, per_leaf, scale_by_learning_rate, zeros

_ADJUST_LR_FNS = (None, "original", "match_rms_adamw", "spectral_unclamped")


def orthogonalize_via_newton_schulz(x: torch.Tensor, ns_coefficients: Sequence[float] = (
        3.4445, -4.775, 2.0315), ns_steps: int = 5, eps: float = 1e-7,
        ns_dtype: torch.dtype | None = torch.bfloat16) -> torch.Tensor:
    """Approximately orthogonalize a matrix (push its singular values towards 1).

    ``ns_steps`` quintic Newton-Schulz iterations ``X <- aX + (bA + cA^2)X`` with ``A = XX^T``,
    on ``X / max(|X|_F, eps)``, in ``ns_dtype``, with the torch ops ``torch.optim.Muon`` uses
    (so the result is bitwise its result).

    Args:
        x: a 2-D tensor.
        ns_coefficients: ``(a, b, c)``.
        ns_steps: the number of iterations, an int >= 0.
        eps: the floor of the Frobenius norm.
        ns_dtype: dtype of the iteration (torch: bfloat16; ``None``: ``x``'s dtype).

    Returns:
        A tensor of ``x``'s shape in ``ns_dtype``.

    Example:
        >>> import torch
        >>> from functrain import optim
        >>> q = optim.orthogonalize_via_newton_schulz(torch.diag(torch.tensor([1.0, 0.1])),
        ...                                           ns_dtype=None)
        >>> q.diagonal().round(decimals=1)
        tensor([0.7000, 0.7000])
    """
    if x.ndim != 2:
        raise ValueError(f"x: expected a 2-D matrix, got shape {tuple(x.shape)}.")
    a, b, c = ns_coefficients
    y = x.to(ns_dtype) if ns_dtype is not None else x.clone()
    tall = x.shape[0] > x.shape[1]
    if tall:
        y = y.T
    y = y / y.norm().clamp(min=eps)
    for _ in range(ns_steps):
        gram = y @ y.T
        update = torch.addmm(gram, gram, gram, beta=b, alpha=c)
        y = torch.addmm(y, update, y, beta=a)
    return y.T if tall else y


def _adjusted_ratio(shape: torch.Size, adjust_lr_fn: str | None) -> float:
    rows, cols = shape[:2]
    if adjust_lr_fn is None or adjust_lr_fn == "original":
        return math.sqrt(max(1, rows / cols))
    if adjust_lr_fn == "match_rms_adamw":
        return 0.2 * math.sqrt(max(rows, cols))
    return math.sqrt(rows / cols)


class ScaleByMuonState(NamedTuple):
    """State of `scale_by_muon`: the momentum buffer ``mu``.

    Example:
        >>> import torch
        >>> from functrain import optim
        >>> optim.scale_by_muon().init({"w": torch.zeros(2, 3)}).mu["w"].shape
        torch.Size([2, 3])
    """

    mu: Updates


def _check_muon_args(momentum, ns_coefficients, eps, ns_steps, adjust_lr_fn, ns_dtype) -> None:
    _checks.beta("momentum", momentum)
    if len(tuple(ns_coefficients)) != 3:
        raise ValueError(f"ns_coefficients: expected three numbers (a, b, c), got "
                         f"{_errors.describe(ns_coefficients)}.")
    for i, v in enumerate(ns_coefficients):
        _checks.number(f"ns_coefficients[{i}]", v)
    _checks.non_negative("eps", eps)
    _errors.check_int("ns_steps", ns_steps, minimum=0)
    _errors.check_choice("adjust_lr_fn", adjust_lr_fn, _ADJUST_LR_FNS)
    _checks.dtype_or_none("ns_dtype", ns_dtype)


def scale_by_muon(momentum: float = 0.95, nesterov: bool = True,
                  ns_coefficients: Sequence[float] = (3.4445, -4.775, 2.0315),
                  eps: float = 1e-7, ns_steps: int = 5, adjust_lr_fn: str | None = None,
                  ns_dtype: torch.dtype | None = torch.bfloat16) -> GradientTransformation:
    """Muon's direction for 2-D params: ``ratio * NS(nesterov(momentum(g)))``.

    The buffer moves as ``B = momentum * B + (1 - momentum) * g`` (a ``lerp``, as in
    ``torch.optim.Muon``); with ``nesterov`` the orthogonalized matrix is ``g + momentum * (B -
    g)``. ``ratio`` is torch's ``adjust_lr_fn`` factor for a ``(rows, cols)`` weight:
    ``sqrt(max(1, rows/cols))`` (``None``/``"original"``), ``0.2 * sqrt(max(rows, cols))``
    (``"match_rms_adamw"``) or ``sqrt(rows/cols)`` (``"spectral_unclamped"``). The learning
    rate and weight decay come after (see `muon`).

    Args:
        momentum: the momentum coefficient, in [0, 1).
        nesterov: use Nesterov momentum.
        ns_coefficients: the Newton-Schulz polynomial ``(a, b, c)``.
        eps: the floor of the Frobenius norm before the iteration.
        ns_steps: Newton-Schulz iterations, >= 0.
        adjust_lr_fn: one of ``None``, ``"original"``, ``"match_rms_adamw"``,
            ``"spectral_unclamped"``.
        ns_dtype: dtype of the iteration (torch's bfloat16 by default; ``None``: the params').

    Returns:
        A `GradientTransformation` with `ScaleByMuonState`.

    Raises:
        ValueError: at init, if a param is not 2-D (names its path).

    Example:
        >>> import torch
        >>> from functrain import optim
        >>> opt = optim.scale_by_muon(ns_dtype=None)
        >>> updates, _ = opt.update({"w": torch.eye(2) * 5}, opt.init({"w": torch.zeros(2, 2)}))
        >>> updates["w"].diagonal().round(decimals=1)
        tensor([1.1000, 1.1000])
    """
    _check_muon_args(momentum, ns_coefficients, eps, ns_steps, adjust_lr_fn, ns_dtype)
    coefficients = tuple(float(v) for v in ns_coefficients)

    def init_fn(params: Params) -> ScaleByMuonState:
        _checks.float_leaves(params, "params")
        for path, p in _tree.leaves_with_path(params, "params"):
            if p.ndim != 2:
                raise ValueError(
                    f"{path}: expected a 2-D matrix (Muon orthogonalizes matrices), got shape "
                    f"{tuple(p.shape)}. HINT: optim.muon(...) sends the other params to its "
                    "fallback optimizer (AdamW by default).")
        return ScaleByMuonState(mu=zeros(params))

    def update_fn(updates: Updates, state: ScaleByMuonState, params: Params | None = None):
        _checks.update_inputs(updates, params)
        _checks.updates(updates, state.mu, dtype=False, ref_name="state.mu")

        def one(g, buf):
            buf_new = torch.lerp(buf, g.to(buf.dtype), 1 - momentum)
            direction = torch.lerp(g.to(buf.dtype), buf_new, momentum) if nesterov else buf_new
            o = orthogonalize_via_newton_schulz(direction, coefficients, ns_steps, eps,
                                                ns_dtype)
            u = o.to(g.dtype) * _adjusted_ratio(g.shape, adjust_lr_fn)
            return u, buf_new

        u, mu = per_leaf(one, updates, state.mu)
        return u, ScaleByMuonState(mu=mu)

    return GradientTransformation(init_fn, update_fn)


def muon(learning_rate: ScalarOrSchedule = 1e-3, weight_decay: float = 0.1,
         momentum: float = 0.95, nesterov: bool = True,
         ns_coefficients: Sequence[float] = (3.4445, -4.775, 2.0315), eps: float = 1e-7,
         ns_steps: int = 5, adjust_lr_fn: str | None = None,
         ns_dtype: torch.dtype | None = torch.bfloat16,
         fallback: GradientTransformation | None = None) -> GradientTransformation:
    """Muon as ``torch.optim.Muon`` (same arguments and defaults) for the 2-D params, and
    ``fallback`` for every other param (biases, norms, scalars).

    For a 2-D param: ``p <- p * (1 - lr * weight_decay) - lr * ratio * NS(momentum(g))`` (see
    `scale_by_muon`). ``torch.optim.Muon`` refuses non-2-D params and its documentation says to
    give them to AdamW: ``fallback=None`` does that with ``adamw(learning_rate,
    weight_decay=0.01)`` (``torch.optim.AdamW``'s defaults at Muon's learning rate). Like
    torch, a 2-D embedding or output head is Muon's too unless ``fallback`` is used through
    `partition` by hand.

    Args:
        learning_rate: a non-negative number or a schedule.
        weight_decay: decoupled weight decay of the 2-D params, >= 0.
        momentum: the momentum coefficient, in [0, 1).
        nesterov: use Nesterov momentum.
        ns_coefficients: the Newton-Schulz polynomial ``(a, b, c)``.
        eps: the floor of the Frobenius norm before the iteration.
        ns_steps: Newton-Schulz iterations, >= 0.
        adjust_lr_fn: torch's learning-rate adjustment by shape (see `scale_by_muon`).
        ns_dtype: dtype of the Newton-Schulz iteration (torch's bfloat16 by default).
        fallback: the optimizer of the non-2-D params (``None``: AdamW as above).

    Returns:
        A `GradientTransformation` (a `partition` over ``"muon"`` and ``"fallback"``).

    Example:
        >>> import torch
        >>> from functrain import optim
        >>> opt = optim.muon(learning_rate=0.02)
        >>> params = {"w": torch.zeros(4, 3), "b": torch.zeros(4)}
        >>> state = opt.init(params)
        >>> sorted(state.inner_states)
        ['fallback', 'muon']
    """
    _checks.scalar_or_schedule("learning_rate", learning_rate)
    _checks.non_negative("weight_decay", weight_decay)
    _check_muon_args(momentum, ns_coefficients, eps, ns_steps, adjust_lr_fn, ns_dtype)
    if fallback is None:
        from ._alias import adamw
        fallback = adamw(learning_rate, weight_decay=0.01)
    inner = chain(scale_by_muon(momentum, nesterov, ns_coefficients, eps, ns_steps,
                                adjust_lr_fn, ns_dtype),
                  add_decayed_weights(weight_decay),
                  scale_by_learning_rate(learning_rate))
    return partition({"muon": inner, "fallback": fallback},
                     lambda tree: _tree.map(lambda p: "muon" if p.ndim == 2 else "fallback",
                                            tree))
