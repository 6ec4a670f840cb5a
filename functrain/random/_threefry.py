"""Threefry-2x32-20 in int64 tensor ops, run as custom operators registered on first use."""

from __future__ import annotations

import math
import struct
from typing import Any

import torch
from torch import Tensor

from .. import _compat

_MASK32 = 0xFFFFFFFF
# Threefry-2x32 rotation constants (Random123), four rounds between key injections.
_ROTATIONS = ((13, 15, 26, 6), (17, 29, 16, 24))
_PARITY = 0x1BD11BDA
# CPU draws are computed in chunks this long, so that the hash's intermediate int64 tensors
# stay in cache (about 5x faster than full-size passes).
_CPU_CHUNK = 1 << 15
# CPU draws of at most this many counters are hashed as Python ints (see `_threefry2x32_`).
_PYTHON_INTS = 16
# float dtype -> (random bits used, mantissa bits), as in jax.random.uniform.
_FLOAT_BITS = {
    torch.float64: (64, 52),
    torch.float32: (32, 23),
    torch.float16: (16, 10),
    torch.bfloat16: (8, 7),
}

# --------------------------------------------------------------------------------------------
# Threefry-2x32-20 in int64 tensor ops.


def threefry2x32(k0: Any, k1: Any, x0: Any, x1: Any) -> tuple[Any, Any]:
    """Threefry-2x32-20 of the counter words ``(x0, x1)`` under the key words ``(k0, k1)``.

    Written with ``+ ^ & >> <<`` only, so the same code runs on Python ints, on int64 tensors
    and on Inductor's values (`functrain.random._lowering`, which fuses it into compiled
    kernels): one definition of the integers, whatever computes them. All inputs are in
    ``[0, 2**32)``; no intermediate reaches ``2**63`` (see `_threefry2x32_`).
    """
    ks = (k0, k1, k0 ^ k1 ^ _PARITY)
    x0 = x0 + k0
    x1 = (x1 + k1) & _MASK32
    for i in range(5):
        for r in _ROTATIONS[i % 2]:
            x0 = x0 + x1
            x1 = (((x1 >> (32 - r)) + (x1 << r)) ^ x0) & _MASK32
        x0 = x0 + ks[(i + 1) % 3]
        x1 = (x1 + (ks[(i + 2) % 3] + (i + 1))) & _MASK32
    return x0 & _MASK32, x1


def _threefry2x32_(key: Tensor, x0: Tensor, x1: Tensor) -> tuple[Tensor, Tensor]:
    """Threefry-2x32-20 of the counter words ``(x0, x1)`` under ``key``, in place.

    The same integers as `threefry2x32`, computed in place (no temporaries). A few counters
    on the CPU are hashed as Python ints: ~125 tensor operations on a handful of elements
    cost ~100x more than the arithmetic (``fold_in`` and ``split`` take this path).

    ``x0`` and ``x1`` are fresh int64 tensors of one shape holding values in ``[0, 2**32)``;
    they are overwritten and returned. No intermediate reaches ``2**63``: ``x0`` is reduced
    modulo ``2**32`` only at the end (it grows by under ``2**34`` per round, to below ``2**39``),
    and the rotation ``rotl(v, r) = (v >> (32 - r)) + v * 2**r`` (then masked) stays below
    ``2**62``.
    """
    if key.device.type == "cpu" and x0.numel() <= _PYTHON_INTS:
        k0, k1 = key.tolist()
        words = [threefry2x32(k0, k1, a, b) for a, b in zip(x0.flatten().tolist(),
                                                            x1.flatten().tolist(), strict=True)]
        x0.copy_(torch.tensor([w[0] for w in words], dtype=torch.int64).view(x0.shape))
        x1.copy_(torch.tensor([w[1] for w in words], dtype=torch.int64).view(x1.shape))
        return x0, x1
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


# The hash runs as custom operators. Eagerly, each is a sequence of in-place integer kernels
# over cache-sized chunks. Under torch.compile with Inductor, `threefry_bits32` and
# `threefry_bernoulli` are lowered (`functrain.random._lowering`) to one elementwise node built
# from `threefry2x32`, which Inductor fuses with its consumer (a dropout's compare and
# multiply), so the int64 words never reach memory. Tracing the ~125 torch ops of the hash
# instead made Inductor re-trace the shared intermediates of every round (10-40 s of code
# generation per draw). The other operators (`threefry2x32` for keys, `threefry2x32_iota`,
# `normal`) stay opaque: a compiled function runs their eager kernels.


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


def _chunked(key: Tensor, n: int, dtype: torch.dtype, fn) -> Tensor:
    """``fn(x0, x1)`` of the Threefry words of the counters ``0 .. n-1``, a ``(n,)`` tensor.

    On the CPU chunk by chunk (`_CPU_CHUNK` counters), so that the hash's int64 temporaries
    and whatever ``fn`` makes of them stay in cache.
    """
    if key.device.type != "cpu" or n <= _CPU_CHUNK:
        return fn(*_iota_words(key, 0, n))
    out = torch.empty(n, dtype=dtype)
    for s in range(0, n, _CPU_CHUNK):
        e = min(s + _CPU_CHUNK, n)
        out[s:e] = fn(*_iota_words(key, s, e))
    return out


def _bits32_impl(key: Tensor, n: int) -> Tensor:
    """``x0 ^ x1`` of the counters ``0 .. n-1`` (`jax.random.bits`): int64, ``(n,)``."""
    return _chunked(key, n, torch.int64, lambda x0, x1: x0.bitwise_xor_(x1))


def _bits32_fake(key, n):
    return key.new_empty(n)


def _bernoulli_impl(key: Tensor, n: int, threshold: int, dtype: torch.dtype) -> Tensor:
    """``(bits32 >> 9) < threshold`` for the counters ``0 .. n-1``: ``(n,)``, 0/1 in ``dtype``.

    With ``threshold = ceil(float32(p) * 2**23)`` this is ``uniform(key, (n,)) < p`` in float32
    (the uniform is ``(bits32 >> 9) * 2**-23``, exactly), without the float. A dropout asks for
    its input's dtype: Inductor's CPU kernels store a float mask (kept for the backward pass)
    at no cost, a bool one at several times the cost of the hash.
    """
    return _chunked(
        key, n, dtype,
        lambda x0, x1: (x0.bitwise_xor_(x1).bitwise_right_shift_(9) < threshold).to(dtype))


def _bernoulli_fake(key, n, threshold, dtype):
    return key.new_empty(n, dtype=dtype)


# XLA's float32 erfinv (Giles' single-precision approximation, as jax.lax.erf_inv lowers on
# the CPU): a degree-8 polynomial in w = -log1p(-x*x), one set of coefficients for w < 5, one
# for the tails.
_ERFINV_CENTRAL = (2.81022636e-08, 3.43273939e-07, -3.5233877e-06, -4.39150654e-06,
                   0.00021858087, -0.00125372503, -0.00417768164, 0.246640727, 1.50140941)
_ERFINV_TAIL = (-0.000200214257, 0.000100950558, 0.00134934322, -0.00367342844,
                0.00573950773, -0.0076224613, 0.00943887047, 1.00167406, 2.83297682)


def _round_bf16(x: Tensor) -> Tensor:
    """Finite float32 ``x`` rounded to bfloat16 (to nearest, ties to even) in integer ops.

    ``x.to(torch.bfloat16)`` between float32 ops is skipped by Inductor, which keeps 16-bit
    intermediates in float32 unless told to emulate eager casts; integer ops it cannot skip.
    """
    b = x.view(torch.int32)
    b = (b + (0x7FFF + ((b >> 16) & 1))) & -65536  # the bits of the nearest bfloat16
    return b.view(torch.float32).to(torch.bfloat16)  # exact: the low 16 bits are zero


def _fma(a: Tensor, b: Tensor, c: Tensor) -> Tensor:
    """``a * b + c`` in the inputs' dtype, rounded as XLA's CPU code rounds it.

    XLA fuses the multiply-add in float32, and in float16 on some CPUs (on others it rounds the
    float16 product and sum separately; this stays fused, the same on every CPU); the product
    of two such values is exact in float64, so adding there and rounding once gives the fused
    result.
    bfloat16 is not fused there; float64 is, but is not emulated here (no wider type).
    """
    if a.dtype == torch.float64:
        return a * b + c
    if a.dtype == torch.bfloat16:  # each op rounded to bfloat16, as eager code rounds it
        return _round_bf16(_round_bf16(a.float() * b.float()).float() + c.float())
    return (a.double() * b.double() + c.double()).to(a.dtype)


def _erfinv32(x: Tensor) -> Tensor:
    """erfinv in float32, computed as XLA computes it (not bit-exact: see `normal`).

    Each polynomial step is XLA's fused multiply-add in float32: the product of two float32
    values is exact in float64, so one float64 ``addcmul`` then rounding to float32 is it
    (3 passes a step, against 7 for the spelled-out `_fma`).
    """
    w = -torch.log1p(-x * x)
    central = w < 5.0
    w = torch.where(central, w - 2.5, torch.sqrt(w) - 3.0).double()
    table = torch.tensor([_ERFINV_CENTRAL, _ERFINV_TAIL], dtype=torch.float32).double()

    def coefficient(i: int) -> Tensor:  # the float32 coefficients, as float64
        return torch.where(central, table[0, i].to(x.device), table[1, i].to(x.device))

    p = coefficient(0)
    for i in range(1, len(_ERFINV_CENTRAL)):
        p = torch.addcmul(coefficient(i), p, w).float().double()
    return torch.where(x.abs() == 1, x * math.inf, p.float() * x)


def _scaled(u: Tensor, low: float, high: float) -> Tensor:
    """``max(low, u * (high - low) + low)`` for ``u`` uniform in [0, 1), as jax.random does.

    The bounds are rounded to ``u``'s dtype first and the multiply-add is fused (one rounding).
    """
    lo = torch.full((), low, dtype=u.dtype, device=u.device)
    span = torch.full((), high, dtype=u.dtype, device=u.device) - lo
    return torch.maximum(_fma(u, span, lo), lo)


def _scaled_unit(key: Tensor, shape: tuple[int, ...], dtype: torch.dtype, low: float,
                 high: float) -> Tensor:
    """Uniform in ``[low, high)`` as `jax.random.uniform` makes it (see `_scaled`)."""
    return _scaled(_unit(key, shape, dtype), low, high)


def _normal_low(dtype: torch.dtype) -> float:
    """The float after -1 towards 0 in ``dtype``: normals use ``u`` uniform in ``(-1, 1)``."""
    return -1.0 + 2.0 ** -(_FLOAT_BITS[dtype][1] + 1)


def _normal_from_uniform(u: Tensor) -> Tensor:
    """``sqrt(2) * erfinv(u)`` in ``u``'s dtype (16-bit dtypes: erfinv in float32, rounded)."""
    if u.dtype == torch.float64:
        return torch.erfinv(u) * math.sqrt(2.0)
    return _erfinv32(u.float()).to(u.dtype).mul_(torch.tensor(math.sqrt(2.0), dtype=u.dtype))


def _normal_impl(key: Tensor, n: int, dtype: torch.dtype) -> Tensor:
    """``n`` standard normals: ``sqrt(2) * erfinv(u)``, ``u`` uniform in ``(-1, 1)``."""
    low = _normal_low(dtype)
    if dtype == torch.float64:
        return _normal_from_uniform(_scaled_unit(key, (n,), dtype, low, 1.0))

    def chunk(x0: Tensor, x1: Tensor) -> Tensor:
        u = _scaled(_unit_from_bits(x0.bitwise_xor_(x1), dtype), low, 1.0)
        return _normal_from_uniform(u)

    return _chunked(key, n, dtype, chunk)


def _normal_fake(key, n, dtype):
    return key.new_empty(n, dtype=dtype)


def _normal_from_uniform_impl(u: Tensor) -> Tensor:
    """`_normal_from_uniform` of a flat ``u``, on the CPU chunk by chunk (in cache)."""
    if u.device.type != "cpu" or u.numel() <= _CPU_CHUNK:
        return _normal_from_uniform(u)
    out = torch.empty_like(u)
    for s in range(0, u.numel(), _CPU_CHUNK):
        out[s:s + _CPU_CHUNK] = _normal_from_uniform(u[s:s + _CPU_CHUNK])
    return out


def _normal_from_uniform_fake(u):
    return torch.empty_like(u)


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
    ("threefry_bits32", _bits32_impl, _bits32_fake),
    ("threefry_bernoulli", _bernoulli_impl, _bernoulli_fake),
    ("normal", _normal_impl, _normal_fake),
    ("normal_from_uniform", _normal_from_uniform_impl, _normal_from_uniform_fake),
)
_registered = False
_lowered = False


@_compat.assume_constant_result
def register_ops() -> bool:
    """Register ``torch.ops.functrain.{threefry2x32, threefry2x32_iota, threefry_bits32,
    threefry_bernoulli, normal, normal_from_uniform}`` once.

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


@_compat.assume_constant_result
def register_lowerings() -> bool:
    """Give Inductor the fusable lowerings of ``threefry_bits32`` and ``threefry_bernoulli``.

    Called while torch.compile traces a draw (so eager code never imports Inductor); runs
    once, and leaves nothing in the graph. Where this torch lacks the private API the
    lowerings use, the operators run opaque: the same bits, unfused.
    """
    global _lowered
    if not _lowered:
        from ._lowering import register  # here, not at import: it imports torch._inductor

        register(threefry2x32)
        _lowered = True
    return True


def _threefry_op(key: Tensor, x0: Tensor, x1: Tensor) -> tuple[Tensor, Tensor]:
    register_ops()
    return torch.ops.functrain.threefry2x32(key, x0, x1)


def _iota_op(key: Tensor, n: int) -> tuple[Tensor, Tensor]:
    register_ops()
    return torch.ops.functrain.threefry2x32_iota(key, n)


def _bits32_op(key: Tensor, n: int) -> Tensor:
    register_ops()
    if torch.compiler.is_compiling():
        register_lowerings()
    return torch.ops.functrain.threefry_bits32(key, n)


def _bernoulli_op(key: Tensor, n: int, threshold: int, dtype: torch.dtype) -> Tensor:
    register_ops()
    if torch.compiler.is_compiling():
        register_lowerings()
    return torch.ops.functrain.threefry_bernoulli(key, n, threshold, dtype)


def _normal_op(key: Tensor, n: int, dtype: torch.dtype) -> Tensor:
    """``n`` normals. Compiled: the uniform from the fused hash, the transform opaque."""
    register_ops()
    if torch.compiler.is_compiling() and dtype != torch.float64:
        # The uniform is integers and exact float ops, so Inductor computes eager's values;
        # the erfinv polynomial (log1p, sqrt) stays eager code, where its bits are pinned.
        u = _scaled_unit(key, (n,), dtype, _normal_low(dtype), 1.0)
        return torch.ops.functrain.normal_from_uniform(u)
    return torch.ops.functrain.normal(key, n, dtype)


def _words(key: Tensor, shape: tuple[int, ...]) -> tuple[Tensor, Tensor]:
    """The two Threefry output words for each element of ``shape`` (flat index = counter)."""
    x0, x1 = _iota_op(key, _count(shape))
    return x0.reshape(shape), x1.reshape(shape)


def _count(shape: tuple[int, ...]) -> int:
    n = math.prod(shape)
    if n > 2**63:
        raise ValueError(f"Expected at most 2**63 elements in a draw, got shape {shape}.")
    return n


def _bits32(key: Tensor, shape: tuple[int, ...]) -> Tensor:
    return _bits32_op(key, _count(shape)).reshape(shape)


@_compat.assume_constant_result
def _threshold(p: float) -> int:
    """``ceil(float32(p) * 2**23)``: ``m * 2**-23 < float32(p)`` exactly when ``m < it``.

    -1 where ``float32(p)`` is not in ``[0, 1]`` (NaN included). Runs while tracing, too.
    """
    try:
        p32 = struct.unpack("f", struct.pack("f", p))[0]  # p rounded to float32
    except OverflowError:
        return -1
    return math.ceil(p32 * 2**23) if 0.0 <= p32 <= 1.0 else -1


def _bernoulli32(key: Tensor, shape: tuple[int, ...], p: float,
                 dtype: torch.dtype = torch.bool) -> Tensor:
    """``uniform(key, shape) < p`` in float32 (``p`` a Python float) as 0/1 in ``dtype``.

    Fusable when compiled (see `_bernoulli_impl`).
    """
    threshold = _threshold(p)
    if threshold < 0:
        return (_unit(key, shape, torch.float32) < p).to(dtype)
    return _bernoulli_op(key, _count(shape), threshold, dtype).reshape(shape)


def _unit_from_bits(bits: Tensor, dtype: torch.dtype) -> Tensor:
    """Exact multiples of ``2**-nmant`` in ``[0, 1)`` from 32-bit words (not float64)."""
    nbits, nmant = _FLOAT_BITS[dtype]
    if nbits == 32:
        m = bits >> 9
    else:  # the low 16 (float16) or 8 (bfloat16) bits
        m = (bits & ((1 << nbits) - 1)) >> (nbits - nmant)
    return m.to(dtype) * 2.0**-nmant


def _unit(key: Tensor, shape: tuple[int, ...], dtype: torch.dtype) -> Tensor:
    """Exact multiples of ``2**-nmant`` in ``[0, 1)``, as jax.random.uniform makes them."""
    if _FLOAT_BITS[dtype][0] == 64:
        x0, x1 = _words(key, shape)
        m = (x0 << 20) | (x1 >> 12)  # the top 52 of the 64 bits x0:x1, below 2**52
        return m.to(dtype) * 2.0**-52
    return _unit_from_bits(_bits32(key, shape), dtype)
