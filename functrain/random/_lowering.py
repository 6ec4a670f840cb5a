"""Inductor lowerings of the hash operators: Threefry fused into the kernels that consume it.

`torch.compile` sees ``threefry_bits32`` and ``threefry_bernoulli`` as custom operators. Left
opaque, each would run its eager kernels and write its result for the consumer to read back.
Lowered here, each becomes one elementwise Inductor node whose element ``j`` is `threefry2x32`
of the counter ``j``, built from the very function the Python-int path runs, with Inductor's
integer ops as the arithmetic. Inductor fuses that node with its consumer (a dropout's compare
and multiply) into one loop.

The arithmetic is 32-bit where the counter fits (draws of up to ``2**31`` elements): words are
int32 lanes holding the same 32 bits as eager code's int64 words, additions and left shifts
wrap modulo ``2**32`` (Inductor emits them overflow-safe), and right shifts are masked to be
logical, so every result equals the eager one bit for bit (``tests/test_random_fused.py``
checks it) while a vector register holds twice the lanes and no ``& 0xFFFFFFFF`` is needed.
Larger draws use int64, as eager code does.

Inductor's FX graph cache keys a compiled graph by the graph, not by this lowering, so a
kernel cached by another functrain version is reused as it was; any version computes the same
Threefry bits, so only its speed can differ.

Imported only when torch.compile first traces a draw (`functrain.random._threefry.
register_lowerings`), since it imports Inductor.
"""

from __future__ import annotations

from typing import Any

import torch

from .._compat import register_inductor_pointwise

_MASK32 = 0xFFFFFFFF


# Draws of at most this many elements hash in 32-bit lanes (their counters fit an int32).
_INT32_COUNTERS = 2**31


class _Word:
    """An integer inside an Inductor kernel, with the operators `threefry2x32` uses.

    ``dtype`` int64: the values of eager code. ``dtype`` int32: the same values modulo
    ``2**32``, so ``& 0xFFFFFFFF`` is a no-op and ``>>`` is made logical.
    """

    __slots__ = ("dtype", "ops", "v")

    def __init__(self, ops: Any, v: Any, dtype: torch.dtype) -> None:
        self.ops, self.v, self.dtype = ops, v, dtype

    def _new(self, v: Any) -> _Word:
        return _Word(self.ops, v, self.dtype)

    def _of(self, other: Any) -> Any:
        if isinstance(other, _Word):
            return other.v
        if self.dtype == torch.int32:
            other &= _MASK32
            other -= (other >> 31) << 32  # the int32 with these 32 bits
        return self.ops.constant(other, self.dtype)

    def __add__(self, other: Any) -> _Word:
        return self._new(self.ops.add(self.v, self._of(other)))

    def __xor__(self, other: Any) -> _Word:
        return self._new(self.ops.bitwise_xor(self.v, self._of(other)))

    def __and__(self, other: Any) -> _Word:
        if self.dtype == torch.int32 and other == _MASK32:
            return self
        return self._new(self.ops.bitwise_and(self.v, self._of(other)))

    def __rshift__(self, s: int) -> _Word:
        v = self.ops.bitwise_right_shift(self.v, self._of(s))
        if self.dtype == torch.int32:  # arithmetic on int32: clear the copied sign bits
            v = self.ops.bitwise_and(v, self._of((1 << (32 - s)) - 1))
        return self._new(v)

    def __lshift__(self, s: int) -> _Word:
        return self._new(self.ops.bitwise_left_shift(self.v, self._of(s)))


_threefry2x32: Any = None  # `functrain.random._threefry.threefry2x32`, given to `register`


def _bits32(ops: Any, k0: Any, k1: Any, index: Any, n: Any) -> _Word:
    """``x0 ^ x1`` of Threefry of the counter ``j`` (high word ``j >> 32``, as eager code)."""
    # n: an int, a sympy Integer (a static size) or a symbolic size (dynamic shapes: int64).
    if (isinstance(n, int) or getattr(n, "is_Integer", False)) and int(n) <= _INT32_COUNTERS:
        dt = torch.int32
        k0, k1 = ops.to_dtype(k0, dt), ops.to_dtype(k1, dt)
        hi, lo = _Word(ops, ops.constant(0, dt), dt), _Word(ops, index(dt), dt)
    else:
        dt = torch.int64
        j = _Word(ops, index(dt), dt)
        hi, lo = j >> 32, j & _MASK32
    x0, x1 = _threefry2x32(_Word(ops, k0, dt), _Word(ops, k1, dt), hi, lo)
    return x0 ^ x1


def _bits32_element(ops: Any, k0: Any, k1: Any, index: Any, n: Any) -> Any:
    w = _bits32(ops, k0, k1, index, n)
    v = ops.to_dtype(w.v, torch.int64)
    return ops.bitwise_and(v, ops.constant(_MASK32, torch.int64)) if w.dtype == torch.int32 else v


def _bernoulli_element(ops: Any, k0: Any, k1: Any, index: Any, n: Any, threshold: int,
                       dtype: torch.dtype) -> Any:
    m = _bits32(ops, k0, k1, index, n) >> 9  # below 2**23 in either dtype; threshold <= 2**23
    return ops.to_dtype(ops.lt(m.v, m._of(threshold)), dtype)


def register(threefry2x32: Any) -> bool:
    """Register both lowerings; False (and the operators stay opaque) if this torch cannot.

    ``threefry2x32`` is `functrain.random._threefry.threefry2x32`, passed in rather than
    imported so that this module, which `_threefry` imports when compiling, imports nothing
    of it.
    """
    global _threefry2x32
    _threefry2x32 = threefry2x32
    ops = torch.ops.functrain
    return register_inductor_pointwise(
        ops.threefry_bits32.default, torch.int64, _bits32_element
    ) and register_inductor_pointwise(
        ops.threefry_bernoulli.default, lambda n, threshold, dtype: dtype, _bernoulli_element
    )
