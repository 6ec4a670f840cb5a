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

On the CPU, a Python-number operand of ``_foreach_mul``/``_foreach_add_`` costs ~2.5x a 0-d
tensor holding the same number (torch 2.14, one thread, the MNIST-1D CNN's 8 leaves: 29 vs 11 us
for a multiply, 25 vs 8 us for an in-place add; measured, the cause not traced), so they take a
cached 0-d tensor instead (`_operand`) where that gives the same bits: float32 and float64
leaves, whose kernels compute in their own dtype with the number rounded to it. Half-precision
leaves compute in float32 with the unrounded number, so they keep the Python number.
"""

from __future__ import annotations

from typing import Any

import optree
import torch

from functrain._compat import functorch_transform_active
from functrain.tree import NAMESPACE

__all__ = ["adam", "add", "decay", "leaves", "scale", "unflatten"]

# 0-d CPU tensors of the numbers the ops below were given, by (number, dtype); never written to
# (only ever an operand). Bounded: a number that changes every step must not grow it forever.
_NUMBERS: dict[tuple[float, torch.dtype], torch.Tensor] = {}  # (no zeros: see _operand)
_EXACT_DTYPES = (torch.float32, torch.float64)


def _operand(value: Any, leaf: torch.Tensor) -> Any:
    """``value`` as the scalar operand of an op over leaves like ``leaf``: a cached 0-d tensor of
    the leaf's dtype for a nonzero Python float and float32/float64 CPU leaves (plain tensors,
    not subclasses such as fake tensors), else ``value``. Zeros stay numbers: ``0.0 == -0.0``
    would share a cache entry, and the sign of a zero product is part of the bits. Not under a
    dispatch mode (the runner's dry run on fake tensors): a tensor made there would be fake."""
    if (type(value) is not float or not value or leaf.dtype not in _EXACT_DTYPES
            or leaf.device.type != "cpu" or (type(leaf) is not torch.Tensor
                                             and type(leaf) is not torch.nn.Parameter)
            or torch._C._len_torch_dispatch_stack()):
        return value
    key = (value, leaf.dtype)
    t = _NUMBERS.get(key)
    if t is None:
        if len(_NUMBERS) >= 64:
            _NUMBERS.clear()
        t = _NUMBERS[key] = torch.tensor(value, dtype=leaf.dtype, device="cpu")
    return t


def leaves(*trees: Any) -> tuple[list[list[torch.Tensor]], list[Any]] | None:
    """The leaves of ``trees`` (lists in one order) and their specs (for `unflatten`), or
    ``None`` where the foreach path does not apply: while compiling, inside a ``torch.func``
    transform, or unless every tree has the first one's structure and every leaf is a floating
    tensor of one dtype, with the shape of the first tree's leaf at its place, that does not
    require grad (with grad enabled). Whatever passes here passes the updates' tree checks
    (`_checks.update_inputs`, `_checks.updates`), so the fast path skips them. (Devices are
    not compared: a foreach op over tensors on several devices runs per tensor, as the
    per-leaf path does.)

    Flat dicts of tensors with their keys in one order (``split_module``'s params and the
    optimizer states made from them) are read as they are, with their key tuple as the spec;
    other trees are flattened by optree (optree specs). The first way costs half the second
    (~8 vs 19 us for two 8-leaf trees on the CPU), and this runs three times per eager step."""
    if torch.compiler.is_compiling() or functorch_transform_active():
        return None
    grad = torch.is_grad_enabled()
    if type(trees[0]) is dict:
        keys = tuple(trees[0])
        flats = [list(t.values()) for t in trees if type(t) is dict and tuple(t) == keys]
        if len(flats) == len(trees):
            fit = _fit(flats, grad)
            if fit != "not a tensor":  # (a nested container or None: optree decides below)
                return (flats, [keys] * len(trees)) if fit == "fits" else None
    flats, specs = [], []
    for t in trees:
        flat, spec = optree.tree_flatten(t, namespace=NAMESPACE)
        if specs and spec != specs[0]:  # (equal specs may differ in dict order: each keeps its own)
            return None
        flats.append(flat)
        specs.append(spec)
    return (flats, specs) if _fit(flats, grad) == "fits" else None


def _fit(flats: list[list[Any]], grad: bool) -> str:
    """Whether the leaves (one list per tree, each in the first one's structure) fit the foreach
    path: "fits", "not a tensor" (a leaf is no tensor, or the first tree has no leaves), or
    "no" (a tensor leaf of another dtype or shape, or one that requires grad)."""
    if not flats[0]:
        return "not a tensor"
    first = flats[0][0]
    if not isinstance(first, torch.Tensor):
        return "not a tensor"
    if not first.is_floating_point():
        return "no"
    dtype = first.dtype
    shapes = []
    for x in flats[0]:
        if not isinstance(x, torch.Tensor):
            return "not a tensor"
        if x.dtype != dtype or (grad and x.requires_grad):
            return "no"
        shapes.append(x.shape)
    for other in flats[1:]:
        for x, shape in zip(other, shapes):
            if not isinstance(x, torch.Tensor):
                return "not a tensor"
            if x.dtype != dtype or x.shape != shape or (grad and x.requires_grad):
                return "no"
    return "fits"


def unflatten(spec: Any, values: list[Any]) -> Any:
    """The tree of ``spec`` (from `leaves`: a dict's key tuple or an optree spec) holding
    ``values``."""
    return dict(zip(spec, values)) if type(spec) is tuple else optree.tree_unflatten(spec, values)


def adam(gs: list[torch.Tensor], ms: list[torch.Tensor], vs: list[torch.Tensor], b1: float,
         b2: float, eps: float, eps_root: float, inv_bc1: torch.Tensor,
         inv_bc2: torch.Tensor) -> tuple[list[torch.Tensor], ...]:
    """`scale_by_adam`'s per-leaf math (without Nesterov) over all leaves: the updates and new
    moments. Python-number hyperparameters; ``inv_bc*`` the 0-d inverse bias corrections."""
    m_new = torch._foreach_lerp(ms, gs, 1 - b1)  # moment(): torch.lerp(m, g, 1 - b1)
    # moment_sq(): torch.addcmul(v * b2, g, g, value=1 - b2), in place on the fresh v * b2
    # (the same kernel; the per-leaf form stays out of place only for vmap's sake)
    v_new = torch._foreach_mul(vs, _operand(b2, gs[0]))
    torch._foreach_addcmul_(v_new, gs, gs, value=1 - b2)
    m_hat = torch._foreach_mul(m_new, inv_bc1)
    denom = torch._foreach_mul(v_new, inv_bc2)
    if eps_root != 0:
        _add_number_(denom, eps_root)
    torch._foreach_sqrt_(denom)
    _add_number_(denom, eps)
    torch._foreach_div_(m_hat, denom)
    # (a 0-d leaf times the 0-d float32 correction is float32, as in the per-leaf `.to`)
    return [u if u.dtype == g.dtype else u.to(g.dtype) for u, g in zip(m_hat, gs)], m_new, v_new


def _add_number_(xs: list[torch.Tensor], value: float) -> None:
    """``x += value`` in place for every leaf (a list of 0-d tensors where `_operand` gives one:
    ``_foreach_add_`` has no single-tensor overload that is faster than the number)."""
    t = _operand(value, xs[0])
    torch._foreach_add_(xs, t if t is value else [t] * len(xs))


def scale(gs: list[torch.Tensor], step_size: Any) -> list[torch.Tensor]:
    """``g * step_size`` for every leaf (a number or 0-d tensor), each in its leaf's dtype."""
    out = torch._foreach_mul(gs, _operand(step_size, gs[0]))
    return [o if o.dtype == g.dtype else o.to(g.dtype) for o, g in zip(out, gs)]


def add(ps: list[torch.Tensor], us: list[torch.Tensor]) -> list[torch.Tensor]:
    """``p + u`` for every leaf, each in its parameter's dtype."""
    out = torch._foreach_add(ps, us)
    return [o if o.dtype == p.dtype else o.to(p.dtype) for o, p in zip(out, ps)]


def decay(gs: list[torch.Tensor], ps: list[torch.Tensor], weight_decay: float
          ) -> list[torch.Tensor]:
    """``torch.add(g, p, alpha=weight_decay)`` for every leaf (`add_decayed_weights`)."""
    return torch._foreach_add(gs, ps, alpha=weight_decay)
