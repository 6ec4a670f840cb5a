"""Inductor lowerings of the hash operators: Threefry fused into the kernels that consume it.

`torch.compile` sees ``threefry_bits32`` and ``threefry_bernoulli`` as custom operators. Left
opaque, each would run its eager kernels and write two int64 words per element for its
consumer to read back. Lowered here, each becomes one elementwise Inductor node whose element
``j`` is `threefry2x32` of the counter ``j``, built from the very function the Python-int path
runs, with Inductor's integer ops as the arithmetic. Inductor fuses that node with its consumer
(a dropout's compare and multiply) into one loop. The integers are those of the eager kernels
(int64 adds, shifts, xors and masks, none overflowing), so compiled draws equal eager draws bit
for bit; ``tests/test_random.py`` checks it.

Imported only when torch.compile first traces a draw (`functrain.random._threefry.
register_lowerings`), since it imports Inductor.
"""

from __future__ import annotations

from typing import Any

import torch

from .._compat import register_inductor_pointwise
from ._threefry import _MASK32, threefry2x32


class _Int:
    """An int64 value inside an Inductor kernel, with the operators `threefry2x32` uses."""

    __slots__ = ("ops", "v")

    def __init__(self, ops: Any, v: Any) -> None:
        self.ops, self.v = ops, v

    def _of(self, other: Any) -> Any:
        return other.v if isinstance(other, _Int) else self.ops.constant(other, torch.int64)

    def __add__(self, other: Any) -> _Int:
        return _Int(self.ops, self.ops.add(self.v, self._of(other)))

    def __xor__(self, other: Any) -> _Int:
        return _Int(self.ops, self.ops.bitwise_xor(self.v, self._of(other)))

    def __and__(self, other: Any) -> _Int:
        return _Int(self.ops, self.ops.bitwise_and(self.v, self._of(other)))

    def __rshift__(self, other: int) -> _Int:
        return _Int(self.ops, self.ops.bitwise_right_shift(self.v, self._of(other)))

    def __lshift__(self, other: int) -> _Int:
        return _Int(self.ops, self.ops.bitwise_left_shift(self.v, self._of(other)))


def _bits32(ops: Any, k0: Any, k1: Any, j: Any) -> _Int:
    """``x0 ^ x1`` of Threefry of the counter ``j`` (high word ``j >> 32``, as eager code)."""
    j = _Int(ops, j)
    x0, x1 = threefry2x32(_Int(ops, k0), _Int(ops, k1), j >> 32, j & _MASK32)
    return x0 ^ x1


def _bits32_element(ops: Any, k0: Any, k1: Any, j: Any) -> Any:
    return _bits32(ops, k0, k1, j).v


def _bernoulli_element(ops: Any, k0: Any, k1: Any, j: Any, threshold: int) -> Any:
    return ops.lt((_bits32(ops, k0, k1, j) >> 9).v, ops.constant(threshold, torch.int64))


def register() -> bool:
    """Register both lowerings; False (and the operators stay opaque) if this torch cannot."""
    ops = torch.ops.functrain
    return register_inductor_pointwise(
        ops.threefry_bits32.default, torch.int64, _bits32_element
    ) and register_inductor_pointwise(
        ops.threefry_bernoulli.default, torch.bool, _bernoulli_element
    )
