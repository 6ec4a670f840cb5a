"""The eager fast path of the most used updates: ``torch._foreach_*`` ops over all leaves at once.

Written per leaf, an Adam step is ~10 small ops per parameter, each a Python call; eagerly that
host time is most of the optimizer's cost on a small model (functrain's Adam took 2.2x
``torch.optim.Adam``'s time on the MNIST-1D CNN's 8 leaves). A ``_foreach`` op runs one op
over every leaf in one call. Compiled, the per-leaf form is the faster one (inductor fuses each
leaf's chain into one loop; see ``_transforms.py``), so this path runs only eagerly: not while
``torch.compile`` traces, not inside a ``torch.func`` transform (a ``vmap`` population must not
hit vmap's per-member fallback, a MAML inner loop keeps ``torch.func``'s autograd), and not
when a leaf requires grad (plain autograd through the optimizer).

The ops are the per-leaf ops, in the same order, on the same operands, so the results are the
same bits (``tests/test_optim_foreach.py`` compares them). The cast back to each leaf's dtype
is written out in each function rather than called: every call is a Python frame per eager
step (``benchmarks/eager_overhead.py`` counts them).
"""

from __future__ import annotations

from typing import Any

import optree
import torch

from functrain._compat import functorch_transform_active
from functrain.tree import NAMESPACE

__all__ = ["adam", "add", "decay", "leaves", "scale"]


def leaves(*trees: Any) -> tuple[list[list[torch.Tensor]], list[Any]] | None:
    """The leaves of ``trees`` (lists in one order) and their treespecs, or ``None`` where the
    foreach path does not apply: while compiling, inside a ``torch.func`` transform, or unless
    every tree has the first one's structure and every leaf is a floating tensor of one dtype,
    with the shape of the first tree's leaf at its place, that does not require grad (with
    grad enabled). Whatever passes here passes the updates' tree checks
    (`_checks.update_inputs`, `_checks.updates`), so the fast path skips them. (Devices are
    not compared: a foreach op over tensors on several devices runs per tensor, as the
    per-leaf path does.)"""
    if torch.compiler.is_compiling() or functorch_transform_active():
        return None
    flat, spec = optree.tree_flatten(trees[0], namespace=NAMESPACE)
    if not flat or not isinstance(flat[0], torch.Tensor) or not flat[0].is_floating_point():
        return None
    dtype = flat[0].dtype
    grad = torch.is_grad_enabled()
    shapes = []
    for x in flat:
        if not isinstance(x, torch.Tensor) or x.dtype != dtype or (grad and x.requires_grad):
            return None
        shapes.append(x.shape)
    out, specs = [flat], [spec]
    for t in trees[1:]:
        other, other_spec = optree.tree_flatten(t, namespace=NAMESPACE)
        if other_spec != spec:  # (equal specs may differ in dict order: each keeps its own)
            return None
        for x, shape in zip(other, shapes):
            if (not isinstance(x, torch.Tensor) or x.dtype != dtype or x.shape != shape
                    or (grad and x.requires_grad)):
                return None
        out.append(other)
        specs.append(other_spec)
    return out, specs


def adam(gs: list[torch.Tensor], ms: list[torch.Tensor], vs: list[torch.Tensor], b1: float,
         b2: float, eps: float, eps_root: float, inv_bc1: torch.Tensor,
         inv_bc2: torch.Tensor) -> tuple[list[torch.Tensor], ...]:
    """`scale_by_adam`'s per-leaf math (without Nesterov) over all leaves: the updates and new
    moments. Python-number hyperparameters; ``inv_bc*`` the 0-d inverse bias corrections."""
    m_new = torch._foreach_lerp(ms, gs, 1 - b1)  # moment(): torch.lerp(m, g, 1 - b1)
    # moment_sq(): torch.addcmul(v * b2, g, g, value=1 - b2), in place on the fresh v * b2
    # (the same kernel; the per-leaf form stays out of place only for vmap's sake)
    v_new = torch._foreach_mul(vs, b2)
    torch._foreach_addcmul_(v_new, gs, gs, value=1 - b2)
    m_hat = torch._foreach_mul(m_new, inv_bc1)
    denom = torch._foreach_mul(v_new, inv_bc2)
    if eps_root != 0:
        torch._foreach_add_(denom, eps_root)
    torch._foreach_sqrt_(denom)
    torch._foreach_add_(denom, eps)
    torch._foreach_div_(m_hat, denom)
    # (a 0-d leaf times the 0-d float32 correction is float32, as in the per-leaf `.to`)
    return [u if u.dtype == g.dtype else u.to(g.dtype) for u, g in zip(m_hat, gs)], m_new, v_new


def scale(gs: list[torch.Tensor], step_size: Any) -> list[torch.Tensor]:
    """``g * step_size`` for every leaf (a number or 0-d tensor), each in its leaf's dtype."""
    out = torch._foreach_mul(gs, step_size)
    return [o if o.dtype == g.dtype else o.to(g.dtype) for o, g in zip(out, gs)]


def add(ps: list[torch.Tensor], us: list[torch.Tensor]) -> list[torch.Tensor]:
    """``p + u`` for every leaf, each in its parameter's dtype."""
    out = torch._foreach_add(ps, us)
    return [o if o.dtype == p.dtype else o.to(p.dtype) for o, p in zip(out, ps)]


def decay(gs: list[torch.Tensor], ps: list[torch.Tensor], weight_decay: float
          ) -> list[torch.Tensor]:
    """``torch.add(g, p, alpha=weight_decay)`` for every leaf (`add_decayed_weights`)."""
    return torch._foreach_add(gs, ps, alpha=weight_decay)
