"""Draws: pure functions of ``(key, shape, dtype)``."""

from __future__ import annotations

import math
import operator
from collections.abc import Sequence

import torch
from torch import Tensor

from .._errors import describe
from ._keys import _check_key, _float_bits, _shape, split
from ._threefry import (
    _FLOAT_BITS,
    _MASK32,
    _bernoulli32,
    _bits32,
    _normal_op,
    _scaled_unit,
    _unit,
)

# --------------------------------------------------------------------------------------------
# Draws.


def bits(key: Tensor, shape: int | Sequence[int] = ()) -> Tensor:
    """Uniformly random 32-bit words, as `jax.random.bits` gives (uint32 values in int64).

    Args:
        key: A key, shape ``(2,)``.
        shape: Shape of the result.

    Returns:
        An int64 tensor of ``shape`` with values in ``[0, 2**32)``, on ``key``'s device.

    Raises:
        TypeError: ``key`` is not a key.

    Example:
        >>> import functrain as ft
        >>> b = ft.random.bits(ft.random.key(0), (2, 3))
        >>> b.shape, b.dtype, bool(((0 <= b) & (b < 2**32)).all())
        (torch.Size([2, 3]), torch.int64, True)
    """
    _check_key(key, "bits")
    return _bits32(key, _shape(shape))



def uniform(
    key: Tensor,
    shape: int | Sequence[int] = (),
    dtype: torch.dtype = torch.float32,
    low: float = 0.0,
    high: float = 1.0,
) -> Tensor:
    """Uniform floats in ``[low, high)``.

    With the default range the values are exact multiples of ``2**-23`` (float32; ``2**-52``
    for float64, ``2**-10`` float16, ``2**-7`` bfloat16), computed as ``jax.random.uniform``
    does. Other ranges are ``max(low, u * (high - low) + low)`` with the bounds rounded to
    ``dtype`` and the multiply-add rounded as XLA rounds it, so float32 and bfloat16 draws
    equal ``jax.random.uniform``'s bit for bit with any bounds; float16 draws do where XLA
    fuses float16's multiply-add, which depends on the CPU (see `functrain.random`).

    Args:
        key: A key, shape ``(2,)``.
        shape: Shape of the result.
        dtype: float64, float32, float16 or bfloat16.
        low: Lower bound (inclusive).
        high: Upper bound (exclusive, up to rounding).

    Returns:
        A tensor of ``shape`` and ``dtype`` on ``key``'s device.

    Raises:
        TypeError: ``key`` is not a key or ``dtype`` is not a supported float type.
        ValueError: ``low >= high``.

    Example:
        >>> import functrain as ft
        >>> u = ft.random.uniform(ft.random.key(0), (1000,), low=-2.0, high=2.0)
        >>> bool(((-2 <= u) & (u < 2)).all())
        True
    """
    _check_key(key, "uniform")
    if not low < high:
        raise ValueError(f"uniform: expected low < high, got low={low}, high={high}.")
    _float_bits(dtype, "uniform")
    if (low, high) == (0.0, 1.0):
        return _unit(key, _shape(shape), dtype)
    return _scaled_unit(key, _shape(shape), dtype, low, high)


def normal(
    key: Tensor, shape: int | Sequence[int] = (), dtype: torch.dtype = torch.float32
) -> Tensor:
    """Standard normal floats: ``sqrt(2) * erfinv(u)`` for ``u`` uniform in ``(-1, 1)``.

    ``u`` never reaches -1 or 1, so the result is always finite. This is how
    ``jax.random.normal`` computes it, with XLA's float32 erfinv polynomial: float16 and
    bfloat16 draws equal JAX's bit for bit, float32 draws within 3 ULP (~99% identical),
    float64 draws use ``torch.erfinv`` (see the module's notes).

    Args:
        key: A key, shape ``(2,)``.
        shape: Shape of the result.
        dtype: float64, float32, float16 or bfloat16.

    Returns:
        A tensor of ``shape`` and ``dtype`` on ``key``'s device.

    Raises:
        TypeError: ``key`` is not a key or ``dtype`` is not a supported float type.

    Example:
        >>> import functrain as ft
        >>> z = ft.random.normal(ft.random.key(0), (10000,))
        >>> abs(z.mean().item()) < 0.05, abs(z.std().item() - 1) < 0.05
        (True, True)
    """
    _check_key(key, "normal")
    _float_bits(dtype, "normal")
    shape = _shape(shape)
    return _normal_op(key, math.prod(shape), dtype).reshape(shape)


def bernoulli(
    key: Tensor, p: float | Tensor = 0.5, shape: int | Sequence[int] | None = None
) -> Tensor:
    """Booleans that are True with probability ``p``: ``uniform(key, shape) < p``.

    Args:
        key: A key, shape ``(2,)``.
        p: Probability of True, a float or a float tensor broadcastable to ``shape``. A Python
            float is compared in float32 (as in JAX), a tensor in its own float dtype.
        shape: Shape of the result; default ``p``'s shape.

    Returns:
        A bool tensor of ``shape``.

    Raises:
        TypeError: ``key`` is not a key.

    Example:
        >>> import functrain as ft
        >>> m = ft.random.bernoulli(ft.random.key(0), 0.25, (10000,))
        >>> m.dtype, abs(m.float().mean().item() - 0.25) < 0.02
        (torch.bool, True)
    """
    _check_key(key, "bernoulli")
    if isinstance(p, Tensor):
        dtype = p.dtype if p.dtype in _FLOAT_BITS else torch.float32
        shape = tuple(p.shape) if shape is None else _shape(shape)
    else:
        shape = () if shape is None else _shape(shape)
        return _bernoulli32(key, shape, float(p))
    return _unit(key, shape, dtype) < p


def _mulmod(a: Tensor, c: int, m: int) -> Tensor:
    """``(a * c) mod m`` for ``a`` in ``[0, m)``, constants ``c < m <= 2**32``, without overflow."""
    c_hi, c_lo = c >> 16, c & 0xFFFF  # each partial product is below 2**48
    return ((a * c_hi) % m * 65536 + a * c_lo) % m


def randint(
    key: Tensor,
    shape: int | Sequence[int],
    low: int,
    high: int,
    dtype: torch.dtype = torch.int64,
) -> Tensor:
    """Integers in ``[low, high)``: a random 64-bit number per element, modulo ``high - low``.

    The bias of the modulo is below ``(high - low) / 2**64``. For ranges up to ``2**16`` this is
    ``jax.random.randint``'s result (int32); for wider ranges JAX keeps only 32 of the 64 bits
    (its ``2**32 mod span`` wraps to 0), functrain keeps all 64.

    Args:
        key: A key, shape ``(2,)``.
        shape: Shape of the result.
        low: Smallest value (inclusive), a Python int.
        high: Bound (exclusive), a Python int with ``0 < high - low <= 2**32``.
        dtype: An integer dtype for the result.

    Returns:
        A tensor of ``shape`` and ``dtype``.

    Raises:
        TypeError: ``key`` is not a key, or ``low``/``high`` are not ints.
        ValueError: the range is empty or wider than ``2**32``.

    Example:
        >>> import functrain as ft
        >>> r = ft.random.randint(ft.random.key(0), (1000,), 3, 7)
        >>> sorted(r.unique().tolist())
        [3, 4, 5, 6]
    """
    _check_key(key, "randint")
    for name, v in (("low", low), ("high", high)):
        if isinstance(v, (bool, Tensor)) or not hasattr(type(v), "__index__"):
            raise TypeError(f"randint: expected {name} to be an int, got {describe(v)}.")
    low, high = operator.index(low), operator.index(high)
    span = high - low
    if not 0 < span <= 2**32:
        raise ValueError(f"randint: expected 0 < high - low <= 2**32, got low={low}, high={high}.")
    shape = _shape(shape)
    k1, k2 = split(key)
    higher, lower = _bits32(k1, shape), _bits32(k2, shape)
    # (higher * 2**32 + lower) mod span, as jax.random.randint computes it for spans <= 2**16.
    offset = (_mulmod(higher % span, 2**32 % span, span) + lower % span) % span
    return (offset + low).to(dtype)


def permutation(key: Tensor, x: int | Tensor) -> Tensor:
    """A random permutation of ``range(x)``, or of a tensor's rows.

    Sorts by random 32-bit words, in ``ceil(3 * ln(n) / ln(2**32 - 1))`` rounds so that ties
    are negligible, as ``jax.random.permutation`` does; identical on every device.

    Args:
        key: A key, shape ``(2,)``.
        x: An int ``n``, or a tensor whose first dimension is permuted.

    Returns:
        ``torch.arange(n)`` permuted (int64, on ``key``'s device), or ``x`` with its rows permuted.

    Raises:
        TypeError: ``key`` is not a key, or ``x`` is neither an int nor a tensor of dim >= 1.

    Example:
        >>> import functrain as ft
        >>> p = ft.random.permutation(ft.random.key(0), 10)
        >>> sorted(p.tolist()) == list(range(10))
        True
    """
    _check_key(key, "permutation")
    if isinstance(x, Tensor):
        if x.dim() == 0:
            raise TypeError(f"permutation: expected a tensor of dim >= 1, got {describe(x)}.")
        n = x.shape[0]
    elif isinstance(x, bool) or not hasattr(type(x), "__index__") or operator.index(x) < 0:
        raise TypeError(f"permutation: expected an int >= 0 or a tensor, got {describe(x)}.")
    else:
        n = operator.index(x)
    perm = torch.arange(n, device=key.device)
    rounds = math.ceil(3 * math.log(max(1, n)) / math.log(_MASK32))
    for _ in range(rounds):
        key, subkey = split(key)
        order = torch.sort(_bits32(subkey, (n,)), stable=True).indices
        perm = perm[order]
    return x[perm.to(x.device)] if isinstance(x, Tensor) else perm

