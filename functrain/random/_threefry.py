"""Threefry-2x32-20 in int64 tensor ops, run as custom operators registered on first use."""

from __future__ import annotations

import math

import torch
from torch import Tensor

_MASK32 = 0xFFFFFFFF
# Threefry-2x32 rotation constants (Random123), four rounds between key injections.
_ROTATIONS = ((13, 15, 26, 6), (17, 29, 16, 24))
_PARITY = 0x1BD11BDA
# CPU draws are computed in chunks this long, so that the hash's intermediate int64 tensors
# stay in cache (about 5x faster than full-size passes).
_CPU_CHUNK = 1 << 15
# float dtype -> (random bits used, mantissa bits), as in jax.random.uniform.
_FLOAT_BITS = {
    torch.float64: (64, 52),
    torch.float32: (32, 23),
    torch.float16: (16, 10),
    torch.bfloat16: (8, 7),
}

# --------------------------------------------------------------------------------------------
# Threefry-2x32-20 in int64 tensor ops.


def _threefry2x32_(key: Tensor, x0: Tensor, x1: Tensor) -> tuple[Tensor, Tensor]:
    """Threefry-2x32-20 of the counter words ``(x0, x1)`` under ``key``, in place.

    ``x0`` and ``x1`` are fresh int64 tensors of one shape holding values in ``[0, 2**32)``;
    they are overwritten and returned. No intermediate reaches ``2**63``: ``x0`` is reduced
    modulo ``2**32`` only at the end (it grows by under ``2**34`` per round, to below ``2**39``),
    and the rotation ``rotl(v, r) = (v >> (32 - r)) + v * 2**r`` (then masked) stays below
    ``2**62``.
    """
    # Python ints are cheaper operands than 0-d tensors, and free to read on the CPU.
    k0, k1 = key.tolist() if key.device.type == "cpu" else key.unbind()
    ks = (k0, k1, k0 ^ k1 ^ _PARITY)
    x0.add_(k0)
    x1.add_(k1).bitwise_and_(_MASK32)
    t = torch.empty_like(x1)
    for i in range(5):
        for r in _ROTATIONS[i % 2]:
            x0.add_(x1)
            torch.bitwise_right_shift(x1, 32 - r, out=t)
            t.add_(x1, alpha=1 << r).bitwise_xor_(x0).bitwise_and_(_MASK32)
            x1, t = t, x1
        x0.add_(ks[(i + 1) % 3])
        x1.add_(ks[(i + 2) % 3] + (i + 1)).bitwise_and_(_MASK32)
    return x0.bitwise_and_(_MASK32), x1


def _iota_words(key: Tensor, start: int, stop: int) -> tuple[Tensor, Tensor]:
    """Threefry of the counters ``start .. stop-1`` (split into high and low 32-bit words)."""
    j = torch.arange(start, stop, dtype=torch.int64, device=key.device)
    hi = j >> 32 if stop > 2**32 else torch.zeros_like(j)
    return _threefry2x32_(key, hi, j.bitwise_and_(_MASK32))


# The hash runs as custom operators, opaque to torch.compile. Inlined, its ~110 integer ops per
# call made Inductor's code generation take 10-40 s per draw (see benchmarks/README.md), because
# the pointwise inliner re-traces the shared intermediates of every round. As an operator, each
# draw is one graph node, compiles in no time, and runs the same kernels as eager code, so
# compiled and eager draws are identical by construction.


def _threefry_impl(key: Tensor, x0: Tensor, x1: Tensor) -> tuple[Tensor, Tensor]:
    """Threefry-2x32-20 of the counter words ``(x0, x1)`` (broadcast) under ``key``."""
    x0, x1 = torch.broadcast_tensors(x0, x1)
    return _threefry2x32_(key, x0.clone(), x1.clone())


def _threefry_fake(key, x0, x1):
    shape = torch.broadcast_shapes(x0.shape, x1.shape)
    return key.new_empty(shape), key.new_empty(shape)


def _iota_impl(key: Tensor, n: int) -> tuple[Tensor, Tensor]:
    """Threefry-2x32-20 of the counters ``0 .. n-1`` under ``key``: two int64 tensors ``(n,)``."""
    if key.device.type != "cpu" or n <= _CPU_CHUNK:
        return _iota_words(key, 0, n)
    parts = [_iota_words(key, s, min(s + _CPU_CHUNK, n)) for s in range(0, n, _CPU_CHUNK)]
    return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])


def _iota_fake(key, n):
    return key.new_empty(n), key.new_empty(n)


# XLA's float32 erfinv (Giles' single-precision approximation, as jax.lax.erf_inv lowers on
# the CPU): a degree-8 polynomial in w = -log1p(-x*x), one set of coefficients for w < 5, one
# for the tails.
_ERFINV_CENTRAL = (2.81022636e-08, 3.43273939e-07, -3.5233877e-06, -4.39150654e-06,
                   0.00021858087, -0.00125372503, -0.00417768164, 0.246640727, 1.50140941)
_ERFINV_TAIL = (-0.000200214257, 0.000100950558, 0.00134934322, -0.00367342844,
                0.00573950773, -0.0076224613, 0.00943887047, 1.00167406, 2.83297682)


def _fma(a: Tensor, b: Tensor, c: Tensor) -> Tensor:
    """``a * b + c`` in the inputs' dtype, rounded as XLA's CPU code rounds it.

    XLA fuses the multiply-add in float32 and float16 (one rounding); the product of two such
    values is exact in float64, so adding there and rounding once gives the fused result.
    bfloat16 is not fused there; float64 is, but is not emulated here (no wider type).
    """
    if a.dtype in (torch.float64, torch.bfloat16):
        return a * b + c
    return (a.double() * b.double() + c.double()).to(a.dtype)


def _erfinv32(x: Tensor) -> Tensor:
    """erfinv in float32, computed as XLA computes it (not bit-exact: see `normal`)."""
    w = -torch.log1p(-x * x)
    central = w < 5.0
    w = torch.where(central, w - 2.5, torch.sqrt(w) - 3.0)

    def coefficient(i: int) -> Tensor:
        return torch.where(central, torch.tensor(_ERFINV_CENTRAL[i], dtype=x.dtype),
                           torch.tensor(_ERFINV_TAIL[i], dtype=x.dtype))

    p = coefficient(0)
    for i in range(1, len(_ERFINV_CENTRAL)):
        p = _fma(p, w, coefficient(i))
    return torch.where(x.abs() == 1, x * math.inf, p * x)


def _scaled_unit(key: Tensor, shape: tuple[int, ...], dtype: torch.dtype, low: float,
                 high: float) -> Tensor:
    """``max(low, u * (high - low) + low)`` for ``u`` uniform in [0, 1), as jax.random does.

    The bounds are rounded to ``dtype`` first and the multiply-add is fused (one rounding).
    """
    lo = torch.full((), low, dtype=dtype, device=key.device)
    span = torch.full((), high, dtype=dtype, device=key.device) - lo
    return torch.maximum(_fma(_unit(key, shape, dtype), span, lo), lo)


def _normal_impl(key: Tensor, n: int, dtype: torch.dtype) -> Tensor:
    """``n`` standard normals: ``sqrt(2) * erfinv(u)``, ``u`` uniform in ``(-1, 1)``."""
    _, nmant = _FLOAT_BITS[dtype]
    low = -1.0 + 2.0 ** -(nmant + 1)  # the float after -1 towards 0
    u = _scaled_unit(key, (n,), dtype, low, 1.0)
    if dtype == torch.float64:
        return torch.erfinv(u) * math.sqrt(2.0)
    z = _erfinv32(u.float()).to(dtype)  # 16-bit dtypes: erfinv in float32, then round
    return z * torch.tensor(math.sqrt(2.0), dtype=dtype)


def _normal_fake(key, n, dtype):
    return key.new_empty(n, dtype=dtype)


def _vmap_by_loop(op):
    """Batch a custom op over vmapped arguments by looping (vmap over keys is rare and small)."""

    def rule(info, in_dims, *args):
        def pick(a, d, i):
            return a if d is None or not isinstance(a, Tensor) else a.select(d, i)

        outs = [
            op(*(pick(a, d, i) for a, d in zip(args, in_dims, strict=True)))
            for i in range(info.batch_size)
        ]
        if isinstance(outs[0], tuple):
            return tuple(torch.stack(o) for o in zip(*outs, strict=True)), (0,) * len(outs[0])
        return torch.stack(outs), 0

    op.register_vmap(rule)


_OPERATORS = (
    ("threefry2x32", _threefry_impl, _threefry_fake),
    ("threefry2x32_iota", _iota_impl, _iota_fake),
    ("normal", _normal_impl, _normal_fake),
)
_registered = False


@torch.compiler.assume_constant_result
def register_ops() -> bool:
    """Register ``torch.ops.functrain.{threefry2x32, threefry2x32_iota, normal}`` once.

    Called by every draw, so the operators exist from the first draw on and ``import
    functrain`` registers nothing. Under torch.compile the call runs while tracing and leaves
    nothing in the graph.
    """
    global _registered
    if not _registered:
        for name, impl, fake in _OPERATORS:
            op = torch.library.custom_op(f"functrain::{name}", impl, mutates_args=())
            op.register_fake(fake)
            _vmap_by_loop(op)
        _registered = True
    return True


def _threefry_op(key: Tensor, x0: Tensor, x1: Tensor) -> tuple[Tensor, Tensor]:
    register_ops()
    return torch.ops.functrain.threefry2x32(key, x0, x1)


def _iota_op(key: Tensor, n: int) -> tuple[Tensor, Tensor]:
    register_ops()
    return torch.ops.functrain.threefry2x32_iota(key, n)


def _normal_op(key: Tensor, n: int, dtype: torch.dtype) -> Tensor:
    register_ops()
    return torch.ops.functrain.normal(key, n, dtype)


def _words(key: Tensor, shape: tuple[int, ...]) -> tuple[Tensor, Tensor]:
    """The two Threefry output words for each element of ``shape`` (flat index = counter)."""
    n = math.prod(shape)
    if n > 2**63:
        raise ValueError(f"Expected at most 2**63 elements in a draw, got shape {shape}.")
    x0, x1 = _iota_op(key, n)
    return x0.reshape(shape), x1.reshape(shape)


def _bits32(key: Tensor, shape: tuple[int, ...]) -> Tensor:
    x0, x1 = _words(key, shape)
    return x0 ^ x1


def _unit(key: Tensor, shape: tuple[int, ...], dtype: torch.dtype) -> Tensor:
    """Exact multiples of ``2**-nmant`` in ``[0, 1)``, as jax.random.uniform makes them."""
    nbits, nmant = _FLOAT_BITS[dtype]
    if nbits == 64:
        x0, x1 = _words(key, shape)
        m = (x0 << 20) | (x1 >> 12)  # the top 52 of the 64 bits x0:x1, below 2**52
    elif nbits == 32:
        m = _bits32(key, shape) >> 9
    else:  # the low 16 (float16) or 8 (bfloat16) bits
        m = (_bits32(key, shape) & ((1 << nbits) - 1)) >> (nbits - nmant)
    return m.to(dtype) * 2.0**-nmant
