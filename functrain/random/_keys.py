"""Keys: make one from a seed, derive new ones with `split` and `fold_in`; key validation."""

from __future__ import annotations

import operator
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from .._errors import check_int, describe
from ._threefry import _FLOAT_BITS, _MASK32, _threefry_op, _words

_KEY_HINT = "HINT: make one with functrain.random.key(seed)"

# --------------------------------------------------------------------------------------------
# Validation.


def _check_key(key: Any, where: str = "key") -> None:
    if not isinstance(key, Tensor) or key.dtype != torch.int64 or tuple(key.shape) != (2,):
        raise TypeError(
            f"{where}: expected an int64 tensor of shape (2,), got {describe(key)}. {_KEY_HINT}."
        )


def _shape(shape: int | Sequence[int]) -> tuple[int, ...]:
    if isinstance(shape, int):
        return (shape,)
    try:
        return tuple(shape)
    except TypeError:
        raise TypeError(
            f"Expected a shape (an int or a sequence of ints), got {shape!r}."
        ) from None


def _float_bits(dtype: torch.dtype, where: str) -> tuple[int, int]:
    if dtype not in _FLOAT_BITS:
        raise TypeError(
            f"{where}: expected dtype float64, float32, float16 or bfloat16, got {dtype}."
        )
    return _FLOAT_BITS[dtype]


# --------------------------------------------------------------------------------------------
# Keys.


def key(seed: int, *, device: torch.device | str | None = None) -> Tensor:
    """Make a key from an integer seed.

    The key holds the seed's high and low 32-bit words, as `jax.random.key` does (seeds below
    ``2**31`` give JAX's key exactly). Negative seeds are taken modulo ``2**64``.

    Args:
        seed: A Python int in ``[-2**63, 2**64)``.
        device: Where the key lives; default the current default device.

    Returns:
        An int64 tensor of shape ``(2,)``.

    Raises:
        TypeError: ``seed`` is not an int.
        ValueError: ``seed`` is out of range.

    Example:
        >>> import functrain as ft
        >>> ft.random.key(42)
        tensor([ 0, 42])
        >>> ft.random.key(2**32 + 5)
        tensor([1, 5])
    """
    if isinstance(seed, (bool, Tensor)) or not hasattr(type(seed), "__index__"):
        raise TypeError(f"Expected an int seed, got {describe(seed)}.")
    seed = operator.index(seed)
    if not -(2**63) <= seed < 2**64:
        raise ValueError(f"Expected a seed in [-2**63, 2**64), got {seed}.")
    seed %= 2**64
    return torch.tensor([seed >> 32, seed & _MASK32], dtype=torch.int64, device=device)


def split(key: Tensor, num: int = 2) -> Tensor:
    """Derive ``num`` independent keys from one.

    Row ``i`` equals ``fold_in(key, i)`` (JAX's partitionable split). Unpack the rows:
    ``k1, k2 = split(key)``. Use each derived key once; keep ``key`` only if you never use it
    directly again.

    Args:
        key: A key, shape ``(2,)``.
        num: How many keys to make.

    Returns:
        An int64 tensor of shape ``(num, 2)``.

    Raises:
        TypeError: ``key`` is not a key or ``num`` is not an int.

    Example:
        >>> import functrain as ft
        >>> keys = ft.random.split(ft.random.key(0), 3)
        >>> keys.shape
        torch.Size([3, 2])
        >>> bool((keys[0] != keys[1]).any())
        True
    """
    _check_key(key, "split")
    check_int("split: num", num, minimum=0)
    x0, x1 = _words(key, (num,))
    return torch.stack([x0, x1], dim=-1)


def fold_in(key: Tensor, data: int | Tensor) -> Tensor:
    """Mix an integer into a key, giving a new key.

    ``fold_in(key, i)`` for different ``i`` are independent keys: this is how a step, a layer or
    a data shard gets its own stream. ``data`` may be a 0-d integer tensor, such as a train
    state's ``step``: no host sync, and a compiled function is not recompiled when its value
    changes. Data in ``[0, 2**32)`` gives `jax.random.fold_in`'s key; larger (and negative)
    values use their full 64 bits.

    Args:
        key: A key, shape ``(2,)``.
        data: A Python int in ``[-2**63, 2**64)`` or a 0-d integer tensor.

    Returns:
        A key, shape ``(2,)``, on ``key``'s device.

    Raises:
        TypeError: ``key`` is not a key, or ``data`` is neither an int nor a 0-d integer tensor.

    Example:
        >>> import torch, functrain as ft
        >>> k = ft.random.key(0)
        >>> torch.equal(ft.random.fold_in(k, 3), ft.random.fold_in(k, torch.tensor(3)))
        True
        >>> torch.equal(ft.random.fold_in(k, 3), ft.random.fold_in(k, 4))
        False
    """
    _check_key(key, "fold_in")
    if isinstance(data, Tensor):
        if data.dim() != 0 or data.dtype.is_floating_point or data.dtype.is_complex:
            raise TypeError(
                f"fold_in: expected an int or a 0-d integer tensor, got {describe(data)}."
            )
        d = data.to(device=key.device, dtype=torch.int64)
        hi, lo = (d >> 32) & _MASK32, d & _MASK32
    elif isinstance(data, bool) or not hasattr(type(data), "__index__"):
        raise TypeError(f"fold_in: expected an int or a 0-d integer tensor, got {describe(data)}.")
    else:
        data = operator.index(data)
        if not -(2**63) <= data < 2**64:
            raise ValueError(f"fold_in: expected data in [-2**63, 2**64), got {data}.")
        data %= 2**64
        hi, lo = data >> 32, data & _MASK32
        hi, lo = (torch.tensor(v, dtype=torch.int64, device=key.device) for v in (hi, lo))
    x0, x1 = _threefry_op(key, hi, lo)
    return torch.stack([x0, x1])

