"""Randomness as data: JAX-style keys, and a scope that routes dropout and ``torch.rand*`` to them.

A training step is reproducible only if every random draw in it is a function of values the step
receives. This module makes randomness such a value, the way `jax.random` does:

* A **key** is an ``int64`` tensor of shape ``(2,)`` holding two 32-bit words (each in
  ``[0, 2**32)``). It is ordinary data: it lives in the train state, is saved in checkpoints,
  moves between devices and is passed into compiled functions like any other tensor.
* New keys are derived, never mutated: `split` makes ``num`` independent keys from one, and
  `fold_in` mixes an integer into a key. ``fold_in(state.rng, state.step)`` gives every step its
  own key; ``step`` may be a 0-d integer tensor, so a compiled step neither syncs with the host
  nor recompiles as the step changes.
* Draws (`bits`, `uniform`, `normal`, `bernoulli`, `randint`, `permutation`) are pure functions
  of ``(key, shape, dtype)``.
* `keyed` opens a scope (a `torch.overrides.TorchFunctionMode`) inside which dropout (hence
  ``nn.Dropout``), ``torch.rand``/``randn``/``randint``/``bernoulli`` and the other ops listed
  there draw from the scope's key instead of the global generator. The *i*-th draw in the scope
  (counting from 0) uses ``fold_in(key, i)``. Random ops the scope cannot key raise
  `NotImplementedError` rather than silently use the global generator.

Mechanism:
    Every draw is Threefry-2x32 with 20 rounds (Salmon et al., "Parallel random numbers: as
    easy as 1, 2, 3", SC 2011), the counter-based generator behind `jax.random`: element ``j``
    of a draw hashes the counter ``(j >> 32, j & 0xFFFFFFFF)`` under the key and XORs the two
    output words (JAX's "partitionable" scheme, its default since 0.5). The hash is written in
    ``int64`` torch ops (add, shift, xor, and) whose intermediates stay below ``2**63``, so no
    signed overflow occurs and every device computes the same bits. Floats are made exactly
    from bits: float32 ``uniform`` is ``(bits >> 9) * 2**-23``; ``normal`` is
    ``sqrt(2) * erfinv(u)`` for ``u`` uniform in ``(-1, 1)``; ``bernoulli(p)`` is
    ``uniform < p``; keyed dropout multiplies by ``bernoulli(1 - p) / (1 - p)``.

    The hash (and ``normal``'s transform) run as the custom operators
    ``torch.ops.functrain.threefry2x32``, ``threefry2x32_iota`` and ``normal``, registered when
    this module is imported. `torch.compile` treats each as one opaque node, so a compiled
    function runs the very kernels eager code runs. Inlining the ~110 integer ops instead made
    Inductor spend 10-40 s generating code for every draw site (it re-traces the shared
    intermediates of each round), against ~0.1 s as an operator. The price is that the hash does
    not fuse with its consumer: it writes two int64 words per element that the (fused)
    consumer then reads.

    `key`, `split`, `fold_in`, `bits`, `uniform`, `bernoulli` and `permutation` give the numbers
    `jax.random` gives with its default threefry implementation (checked against JAX 0.10 for
    seeds below ``2**31`` and ``fold_in`` data below ``2**32``); so does `randint` for ranges up
    to ``2**16``, and `normal` up to the rounding of ``erfinv``.

Guarantees:
    * ``(key, shape, dtype)`` fix every draw. Compiled and eager draws are bit-identical (the
      same kernels run). Integer draws, `uniform` on ``[0, 1)``, `bernoulli` and dropout masks
      are bit-identical across devices too; `normal` may differ across devices in the last bit
      (``erfinv``), as may `uniform` with a custom ``low``/``high`` under a compiler that fuses
      multiply-add.
    * Inside `keyed`, draws are numbered by a Python counter in program order, so for a fixed
      program a key fixes every draw: the same seed gives an identical run, compiled or eager,
      and a run resumed at step ``k`` from a state holding the key and the step repeats the
      uninterrupted one.
    * The global generator is neither read nor advanced.

Limits:
    * The draw counter follows Python control flow: a branch that skips a draw renumbers the
      later draws of the scope (still deterministic for the same inputs).
    * Enter `keyed` *inside* the function you compile. Dynamo then traces the mode away
      (``fullgraph=True`` works, also under `torch.func.grad` of `torch.func.functional_call`) and
      each draw's index is a constant of the graph. A scope entered *outside* a compiled function
      still draws correctly, but Dynamo guards on its counter: each call recompiles.
    * Dynamo (torch 2.14.1) hands a function to a mode only if it is on its list of overridable
      functions, and ``torch.rand_like``, ``randn_like``, ``randint_like`` and ``torch.normal``
      are not: *inside compiled code* they bypass the scope and use the global generator. Write
      ``torch.randn(x.shape, dtype=x.dtype, device=x.device)`` there instead. Eager code is keyed.
    * Python-level torch functions that handle ``__torch_function__`` themselves and draw inside
      hide those draws from the scope; `keyed` handles the ones in torch (dropout family,
      ``scaled_dot_product_attention``, ``rrelu``, ``gumbel_softmax``, fractional max pooling,
      ``nn.init``) and raises for ``F.multi_head_attention_forward`` with dropout and RNN dropout.
    * In eager mode every torch call inside the scope passes through a Python
      ``__torch_function__`` handler (a few microseconds each).

Cost:
    One ``F.dropout`` (float32, ``p=0.1``), native -> keyed, medians of 15 interleaved rounds,
    2-core CPU shared with other jobs (load ~3), torch 2.14.1, 2026-11-27
    (``python benchmarks/random_cost.py``):

    ==================  ==========================  ==========================
    input               eager                       compiled (Inductor)
    ==================  ==========================  ==========================
    (128, 512)          0.56 ms -> 4.5 ms (8.2x)    0.61 ms -> 4.2 ms (6.8x)
    (64, 32, 26, 26)    28 ms -> 179 ms (6.3x)      23 ms -> 133 ms (5.7x)
    ==================  ==========================  ==========================

    Reruns under other loads moved single figures by up to 5x but kept the ratios at 2-8x
    (compiled small tensors up to 26x: native compiled dropout there is nearly free). The
    hash is ~110 int64 operations per element, run in place; on CPU in cache-sized chunks. On
    GPUs it runs the same operations as separate kernels (memory-bound, about 2.6 KB of traffic
    per element); no GPU figures were measured. A fused kernel registered for the ``cuda``
    dispatch key of ``functrain::threefry2x32_iota`` would remove that cost without changing a
    bit.

    Compile time: a two-layer MLP step (`torch.func.grad` over `torch.func.functional_call`,
    two ``nn.Dropout``), Inductor with caches off, took 7.2 s native and 9.1 s keyed; with the
    hash inlined as torch ops rather than an operator it took 177 s.

Example:
    >>> import torch, functrain as ft
    >>> key = ft.random.key(0)
    >>> k_init, k_data = ft.random.split(key)
    >>> ft.random.uniform(k_data, (3,)).shape
    torch.Size([3])
    >>> drop = torch.nn.Dropout(0.5)
    >>> x = torch.ones(8)
    >>> with ft.random.keyed(ft.random.fold_in(key, 7)):
    ...     a = drop(x)
    >>> with ft.random.keyed(ft.random.fold_in(key, 7)):
    ...     b = drop(x)
    >>> torch.equal(a, b)
    True
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.overrides import TorchFunctionMode

__all__ = [
    "KeyedRandomness",
    "bernoulli",
    "bits",
    "fold_in",
    "key",
    "keyed",
    "normal",
    "permutation",
    "randint",
    "split",
    "uniform",
]

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
_KEY_HINT = "HINT: make one with functrain.random.key(seed)"


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
# call made Inductor's code generation take 10-40 s per draw (2-core CPU, torch 2.14.1), because
# the pointwise inliner re-traces the shared intermediates of every round. As an operator, each
# draw is one graph node, compiles in no time, and runs the same kernels as eager code, so
# compiled and eager draws are identical by construction.


@torch.library.custom_op("functrain::threefry2x32", mutates_args=())
def _threefry_op(key: Tensor, x0: Tensor, x1: Tensor) -> tuple[Tensor, Tensor]:
    """Threefry-2x32-20 of the counter words ``(x0, x1)`` (broadcast) under ``key``."""
    x0, x1 = torch.broadcast_tensors(x0, x1)
    return _threefry2x32_(key, x0.clone(), x1.clone())


@_threefry_op.register_fake
def _(key, x0, x1):
    shape = torch.broadcast_shapes(x0.shape, x1.shape)
    return key.new_empty(shape), key.new_empty(shape)


@torch.library.custom_op("functrain::threefry2x32_iota", mutates_args=())
def _iota_op(key: Tensor, n: int) -> tuple[Tensor, Tensor]:
    """Threefry-2x32-20 of the counters ``0 .. n-1`` under ``key``: two int64 tensors ``(n,)``."""
    if key.device.type != "cpu" or n <= _CPU_CHUNK:
        return _iota_words(key, 0, n)
    parts = [_iota_words(key, s, min(s + _CPU_CHUNK, n)) for s in range(0, n, _CPU_CHUNK)]
    return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])


@_iota_op.register_fake
def _(key, n):
    return key.new_empty(n), key.new_empty(n)


@torch.library.custom_op("functrain::normal", mutates_args=())
def _normal_op(key: Tensor, n: int, dtype: torch.dtype) -> Tensor:
    """``n`` standard normals: ``sqrt(2) * erfinv(u)``, ``u`` uniform in ``(-1, 1)``."""
    _, nmant = _FLOAT_BITS[dtype]
    low = -1.0 + 2.0 ** -(nmant + 1)  # the float after -1 towards 0
    u = torch.clamp_min(_unit(key, (n,), dtype) * (1.0 - low) + low, low)
    if dtype in (torch.float16, torch.bfloat16):  # erfinv in float32, then round
        return (torch.erfinv(u.float()) * math.sqrt(2.0)).to(dtype)
    return torch.erfinv(u) * math.sqrt(2.0)


@_normal_op.register_fake
def _(key, n, dtype):
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


for _op in (_threefry_op, _iota_op, _normal_op):
    _vmap_by_loop(_op)


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


# --------------------------------------------------------------------------------------------
# Validation.


def _describe(x: Any) -> str:
    if isinstance(x, Tensor):
        return f"{str(x.dtype).removeprefix('torch.')} tensor of shape {tuple(x.shape)}"
    return f"{type(x).__name__} {x!r}"


def _check_key(key: Any, where: str = "key") -> None:
    if not isinstance(key, Tensor) or key.dtype != torch.int64 or tuple(key.shape) != (2,):
        raise TypeError(
            f"{where}: expected an int64 tensor of shape (2,), got {_describe(key)}; {_KEY_HINT}."
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
        raise TypeError(f"Expected an int seed, got {_describe(seed)}.")
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
    if isinstance(num, bool) or not isinstance(num, int) or num < 0:
        raise TypeError(f"split: expected num to be a non-negative int, got {_describe(num)}.")
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
                f"fold_in: expected an int or a 0-d integer tensor, got {_describe(data)}."
            )
        d = data.to(device=key.device, dtype=torch.int64)
        hi, lo = (d >> 32) & _MASK32, d & _MASK32
    elif isinstance(data, bool) or not hasattr(type(data), "__index__"):
        raise TypeError(f"fold_in: expected an int or a 0-d integer tensor, got {_describe(data)}.")
    else:
        data = operator.index(data)
        if not -(2**63) <= data < 2**64:
            raise ValueError(f"fold_in: expected data in [-2**63, 2**64), got {data}.")
        data %= 2**64
        hi, lo = data >> 32, data & _MASK32
        hi, lo = (torch.tensor(v, dtype=torch.int64, device=key.device) for v in (hi, lo))
    x0, x1 = _threefry_op(key, hi, lo)
    return torch.stack([x0, x1])


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
    does. Other ranges are ``max(low, u * (high - low) + low)``.

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
    u = _unit(key, _shape(shape), dtype)
    if (low, high) != (0.0, 1.0):
        u = torch.clamp_min(u * (high - low) + low, low)
    return u


def normal(
    key: Tensor, shape: int | Sequence[int] = (), dtype: torch.dtype = torch.float32
) -> Tensor:
    """Standard normal floats: ``sqrt(2) * erfinv(u)`` for ``u`` uniform in ``(-1, 1)``.

    ``u`` never reaches -1 or 1, so the result is always finite. This is how
    ``jax.random.normal`` computes it; results agree with JAX up to ``erfinv``'s rounding.
    16-bit dtypes are computed in float32 and rounded.

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
        p, dtype = float(p), torch.float32
        shape = () if shape is None else _shape(shape)
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
            raise TypeError(f"randint: expected {name} to be an int, got {_describe(v)}.")
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
            raise TypeError(f"permutation: expected a tensor of dim >= 1, got {_describe(x)}.")
        n = x.shape[0]
    elif isinstance(x, bool) or not hasattr(type(x), "__index__") or operator.index(x) < 0:
        raise TypeError(f"permutation: expected a non-negative int or a tensor, got {x!r}.")
    else:
        n = operator.index(x)
    perm = torch.arange(n, device=key.device)
    rounds = math.ceil(3 * math.log(max(1, n)) / math.log(_MASK32))
    for _ in range(rounds):
        key, subkey = split(key)
        order = torch.sort(_bits32(subkey, (n,)), stable=True).indices
        perm = perm[order]
    return x[perm.to(x.device)] if isinstance(x, Tensor) else perm


# --------------------------------------------------------------------------------------------
# The keyed scope.


class KeyedRandomness(TorchFunctionMode):
    """The scope returned by `keyed`: routes torch's random ops to a key. Make it with `keyed`.

    Attributes:
        key: The scope's key.
        draws: How many draws the scope has made; draw ``i`` used ``fold_in(key, i)``.

    Example:
        >>> import torch, functrain as ft
        >>> with ft.random.keyed(ft.random.key(0)) as scope:
        ...     a, b = torch.rand(2), torch.randn(3)
        >>> scope.draws
        2
    """

    def __init__(self, key: Tensor) -> None:
        super().__init__()
        _check_key(key, "keyed")
        self.key = key
        self.draws = 0

    def next_key(self, device: torch.device | str | None = None) -> Tensor:
        """The key for the next draw, ``fold_in(self.key, self.draws)``, on ``device``.

        Example:
            >>> import torch, functrain as ft
            >>> k = ft.random.key(0)
            >>> scope = ft.random.keyed(k)
            >>> torch.equal(scope.next_key(), ft.random.fold_in(k, 0)), scope.draws
            (True, 1)
        """
        k = fold_in(self.key, self.draws)
        self.draws += 1
        return k if device is None else k.to(device)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        handler = _HANDLERS.get(func)
        if handler is not None:
            out = handler(self, *args, **kwargs)
            if out is not _PASS:
                return out
        elif func in _UNSUPPORTED:
            raise NotImplementedError(
                f"{_UNSUPPORTED[func][0]} is not supported inside functrain.random.keyed(...): "
                f"it would draw from the global generator. HINT: {_UNSUPPORTED[func][1]}"
            )
        return func(*args, **kwargs)


def keyed(key: Tensor) -> KeyedRandomness:
    """A scope in which dropout and ``torch.rand*`` draw from ``key``, not the global generator.

    Inside ``with keyed(key):``, the *i*-th random op (counting from 0) draws from
    ``fold_in(key, i)``, so a key determines every draw of a fixed program. Keyed ops:
    ``F.dropout`` (so ``nn.Dropout``), ``F.dropout1d/2d/3d``, ``F.alpha_dropout``,
    ``F.feature_alpha_dropout``, ``torch.dropout`` and friends, ``F.scaled_dot_product_attention``
    with ``dropout_p > 0`` (math path), ``F.rrelu`` in training, ``F.gumbel_softmax``,
    ``F.fractional_max_pool2d/3d``, ``torch.rand``, ``torch.randn``, ``torch.randint``,
    ``torch.randperm``, ``torch.normal``, ``torch.bernoulli``, the ``*_like`` variants, and
    ``Tensor.uniform_``, ``normal_``, ``bernoulli_``, ``exponential_`` (so ``nn.init`` too).
    Other random ops raise `NotImplementedError`, as do ``generator=`` and ``out=`` arguments.
    Outside the scope nothing changes.

    Enter it inside the function you compile: it then traces into the graph with
    ``fullgraph=True``, also under `torch.func.grad` over `torch.func.functional_call`, and
    compiles once however the key's value changes. In compiled code ``torch.rand_like``,
    ``randn_like``, ``randint_like`` and ``torch.normal`` escape the scope (a Dynamo gap; see
    the module docstring): use ``torch.rand(x.shape, ...)`` there. Dropout honours
    ``training=False`` (identity) and ``inplace=True``.

    Args:
        key: A key, shape ``(2,)``, e.g. ``fold_in(state.rng, state.step)``.

    Returns:
        A context manager (a `torch.overrides.TorchFunctionMode`).

    Raises:
        TypeError: ``key`` is not a key.

    Example:
        >>> import torch, functrain as ft
        >>> k = ft.random.key(0)
        >>> with ft.random.keyed(k):
        ...     a = torch.rand(3)
        ...     b = torch.nn.functional.dropout(torch.ones(4), 0.5)
        >>> torch.equal(a, ft.random.uniform(ft.random.fold_in(k, 0), (3,)))
        True
        >>> with ft.random.keyed(k):
        ...     try:
        ...         torch.multinomial(torch.ones(3), 1)
        ...     except NotImplementedError as e:
        ...         print(str(e)[:41])
        torch.multinomial is not supported inside
    """
    return KeyedRandomness(key)


_PASS = object()  # a handler's answer for "run the original function"


def _no_generator(where: str, generator: Any = None, out: Any = None) -> None:
    if generator is not None:
        raise NotImplementedError(
            f"{where}(generator=...) is not supported inside functrain.random.keyed(...): the "
            "scope's key replaces generators. HINT: drop the generator argument."
        )
    if out is not None:
        raise NotImplementedError(
            f"{where}(out=...) is not supported inside functrain.random.keyed(...). "
            "HINT: assign the result instead."
        )


# Dropout family -----------------------------------------------------------------------------

_SELU_ALPHA = 1.7580993408473766  # as in ATen's alpha dropout


def _dropout_impl(scope, /, x, p, training, inplace, *, feature=False, alpha=False, batched=True):
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"dropout probability has to be between 0 and 1, but got {p}")
    if not training or p == 0.0:
        return x
    if feature:
        if x.dim() < (2 if batched else 1):
            raise RuntimeError(
                f"Feature dropout requires at least 2 dimensions in the input, got {x.dim()}."
            )
        lead = 2 if batched else 1
        shape = tuple(x.shape[:lead]) + (1,) * (x.dim() - lead)
    else:
        shape = tuple(x.shape)
    if p == 1.0:  # as ATen: everything dropped, no draw
        return x.mul_(0.0) if inplace else x * 0.0
    keep = bernoulli(scope.next_key(x.device), 1.0 - p, shape).to(x.dtype)
    if not alpha:
        noise = keep * (1.0 / (1.0 - p))
        return x.mul_(noise) if inplace else x * noise
    a = 1.0 / math.sqrt((_SELU_ALPHA**2 * p + 1.0) * (1.0 - p))
    b = (keep - 1.0) * (_SELU_ALPHA * a) + _SELU_ALPHA * a * p
    noise = keep * a
    return x.mul_(noise).add_(b) if inplace else x * noise + b


def _f_dropout(scope, /, input, p=0.5, training=True, inplace=False):
    return _dropout_impl(scope, input, p, training, inplace)


def _f_alpha_dropout(scope, /, input, p=0.5, training=False, inplace=False):
    return _dropout_impl(scope, input, p, training, inplace, alpha=True)


def _f_feature_alpha_dropout(scope, /, input, p=0.5, training=False, inplace=False):
    return _dropout_impl(scope, input, p, training, inplace, feature=True, alpha=True)


def _f_dropout1d(scope, /, input, p=0.5, training=True, inplace=False):
    if input.dim() not in (2, 3):
        raise RuntimeError(
            f"dropout1d: Expected 2D or 3D input, but received a {input.dim()}D input."
        )
    return _dropout_impl(scope, input, p, training, inplace, feature=True, batched=input.dim() == 3)


def _f_dropout2d(scope, /, input, p=0.5, training=True, inplace=False):
    # Like torch: a 3D input is treated as (N, C, L).
    return _dropout_impl(scope, input, p, training, inplace, feature=True)


def _f_dropout3d(scope, /, input, p=0.5, training=True, inplace=False):
    return _dropout_impl(scope, input, p, training, inplace, feature=True, batched=input.dim() != 4)


def _aten_dropout(feature, alpha, inplace):
    def handler(scope, /, input, p, train):
        return _dropout_impl(scope, input, p, train, inplace, feature=feature, alpha=alpha)

    return handler


def _native_dropout(scope, /, input, p, train):
    if train is False:
        return input.clone(), torch.ones_like(input, dtype=torch.bool)
    keep = bernoulli(scope.next_key(input.device), 1.0 - p, tuple(input.shape))
    scale = 1.0 / (1.0 - p) if p < 1.0 else 0.0
    return input * (keep.to(input.dtype) * scale), keep


def _sdpa(
    scope,
    /,
    query,
    key,
    value,
    attn_mask=None,
    dropout_p=0.0,
    is_causal=False,
    scale=None,
    enable_gqa=False,
):
    if dropout_p == 0.0:
        return _PASS
    # The math path of torch's documentation, with keyed dropout on the attention weights.
    L, S = query.size(-2), key.size(-2)
    scale = 1.0 / math.sqrt(query.size(-1)) if scale is None else scale
    if enable_gqa:
        key = key.repeat_interleave(query.size(-3) // key.size(-3), -3)
        value = value.repeat_interleave(query.size(-3) // value.size(-3), -3)
    scores = query @ key.transpose(-2, -1) * scale
    if is_causal:
        causal = torch.ones(L, S, dtype=torch.bool, device=query.device).tril()
        scores = scores.masked_fill(~causal, float("-inf"))
    if attn_mask is not None:
        if attn_mask.dtype == torch.bool:
            scores = scores.masked_fill(~attn_mask, float("-inf"))
        else:
            scores = scores + attn_mask
    weights = _dropout_impl(scope, torch.softmax(scores, dim=-1), dropout_p, True, False)
    return weights @ value


def _mha(scope, /, *args, **kwargs):
    dropout_p = args[10] if len(args) > 10 else kwargs.get("dropout_p", 0.0)
    training = args[13] if len(args) > 13 else kwargs.get("training", True)
    if training and dropout_p > 0.0:
        raise NotImplementedError(
            "nn.MultiheadAttention with dropout > 0 in training draws inside "
            "F.multi_head_attention_forward, which functrain.random.keyed(...) cannot reach. "
            "HINT: set dropout=0.0 there, or use an attention module that calls "
            "F.scaled_dot_product_attention or F.dropout itself (both are keyed)."
        )
    return _PASS


def _rrelu(inplace):
    def handler(scope, /, input, lower=1.0 / 8, upper=1.0 / 3, training=False, generator=None):
        _no_generator("rrelu", generator)
        if not training:
            return _PASS
        slope = uniform(scope.next_key(input.device), tuple(input.shape), input.dtype, lower, upper)
        noise = torch.where(input <= 0, slope, torch.ones_like(slope))
        return input.mul_(noise) if inplace else input * noise

    return handler


def _f_rrelu(scope, /, input, lower=1.0 / 8, upper=1.0 / 3, training=False, inplace=False):
    return _rrelu(inplace)(scope, input, lower, upper, training)


def _gumbel_softmax(scope, /, logits, tau=1.0, hard=False, eps=1e-10, dim=-1):
    u = uniform(scope.next_key(logits.device), tuple(logits.shape), logits.dtype)
    gumbels = -torch.log(-torch.log1p(-u))  # ~Gumbel(0, 1); 1 - u > 0
    y_soft = ((logits + gumbels) / tau).softmax(dim)
    if not hard:
        return y_soft
    index = y_soft.max(dim, keepdim=True)[1]
    y_hard = torch.zeros_like(logits).scatter_(dim, index, 1.0)
    return y_hard - y_soft.detach() + y_soft


def _fractional_max_pool(spatial):
    def handler(
        scope,
        /,
        input,
        kernel_size,
        output_size=None,
        output_ratio=None,
        return_indices=False,
        _random_samples=None,
    ):
        if _random_samples is None:
            n_batch = 1 if input.dim() == spatial + 1 else input.size(0)
            shape = (n_batch, input.size(-spatial - 1), spatial)
            _random_samples = uniform(scope.next_key(input.device), shape, input.dtype)
        return _FRACTIONAL[spatial](
            input, kernel_size, output_size, output_ratio, return_indices, _random_samples
        )

    return handler


_FRACTIONAL = {2: F.fractional_max_pool2d, 3: F.fractional_max_pool3d}


# Factories and in-place samplers ----------------------------------------------------------


def _factory(where, size, kwargs, default_dtype, like=None):
    """Parse a torch factory's size and keyword arguments: (shape, dtype, device, finish)."""
    if "size" in kwargs:
        size = kwargs.pop("size")
    elif len(size) == 1 and isinstance(size[0], (tuple, list, torch.Size)):
        size = size[0]
    _no_generator(where, kwargs.pop("generator", None), kwargs.pop("out", None))
    dtype = kwargs.pop("dtype", None)
    device = kwargs.pop("device", None)
    requires_grad = kwargs.pop("requires_grad", False)
    pin_memory = kwargs.pop("pin_memory", False)
    kwargs.pop("memory_format", None)
    if kwargs.pop("layout", None) not in (None, torch.strided) or kwargs.pop("names", None):
        raise NotImplementedError(
            f"{where}: only strided, unnamed tensors are supported inside "
            "functrain.random.keyed(...)."
        )
    if kwargs:
        raise TypeError(f"{where}() got unexpected keyword arguments {sorted(kwargs)}.")
    if like is not None:
        shape = tuple(like.shape)
        dtype = like.dtype if dtype is None else dtype
        device = like.device if device is None else device
    else:
        shape = tuple(size)
        dtype = default_dtype if dtype is None else dtype
        # torch.get_default_device() does not trace; a factory call honours it and does.
        device = torch.empty(0).device if device is None else device

    def finish(t):
        if pin_memory:
            t = t.pin_memory()
        return t.requires_grad_() if requires_grad else t

    return shape, dtype, device, finish


def _rand(scope, /, *size, **kwargs):
    shape, dtype, device, finish = _factory("torch.rand", size, kwargs, torch.get_default_dtype())
    return finish(uniform(scope.next_key(device), shape, dtype))


def _randn(scope, /, *size, **kwargs):
    shape, dtype, device, finish = _factory("torch.randn", size, kwargs, torch.get_default_dtype())
    return finish(normal(scope.next_key(device), shape, dtype))


def _rand_like(scope, /, input, **kwargs):
    shape, dtype, device, finish = _factory("torch.rand_like", (), kwargs, None, like=input)
    return finish(uniform(scope.next_key(device), shape, dtype))


def _randn_like(scope, /, input, **kwargs):
    shape, dtype, device, finish = _factory("torch.randn_like", (), kwargs, None, like=input)
    return finish(normal(scope.next_key(device), shape, dtype))


def _randint(scope, /, *args, **kwargs):
    low = kwargs.pop("low", 0)
    if "high" in kwargs:
        high, size = kwargs.pop("high"), args
    elif len(args) >= 3 or (len(args) == 2 and "size" in kwargs):
        low, high, size = args[0], args[1], args[2:]
    else:
        high, size = args[0], args[1:]
    shape, dtype, device, finish = _factory("torch.randint", size, kwargs, torch.int64)
    return finish(randint(scope.next_key(device), shape, low, high, dtype))


def _randint_like(scope, /, input, *args, **kwargs):
    low = kwargs.pop("low", 0)
    high = kwargs.pop("high", None)
    if len(args) == 2:
        low, high = args
    elif len(args) == 1:
        high = args[0]
    shape, dtype, device, finish = _factory("torch.randint_like", (), kwargs, None, like=input)
    return finish(randint(scope.next_key(device), shape, low, high, dtype))


def _randperm(scope, /, n, **kwargs):
    shape, dtype, device, finish = _factory("torch.randperm", (), kwargs, torch.int64)
    return finish(permutation(scope.next_key(device), n).to(dtype))


def _torch_normal(scope, /, mean, std=1.0, size=None, *, generator=None, out=None, **kwargs):
    _no_generator("torch.normal", generator, out)
    tensors = [t for t in (mean, std) if isinstance(t, Tensor)]
    if tensors:
        shape = torch.broadcast_shapes(*(t.shape for t in tensors))
        dtype = torch.result_type(mean, std) if len(tensors) == 2 else tensors[0].dtype
        device = tensors[0].device
        finish = lambda t: t
    else:
        shape, dtype, device, finish = _factory(
            "torch.normal", (size,), kwargs, torch.get_default_dtype()
        )
    return finish(normal(scope.next_key(device), shape, dtype) * std + mean)


def _bernoulli(scope, /, input, p=None, *, generator=None, out=None):
    _no_generator("torch.bernoulli", generator, out)
    probs = input if p is None else p
    draw = bernoulli(scope.next_key(input.device), probs, tuple(input.shape))
    return draw.to(input.dtype)


def _bernoulli_(scope, /, self, p=0.5, *, generator=None):
    _no_generator("Tensor.bernoulli_", generator)
    return self.copy_(bernoulli(scope.next_key(self.device), p, tuple(self.shape)))


def _uniform_(scope, /, self, *args, generator=None, **kwargs):
    _no_generator("Tensor.uniform_", generator)
    low = args[0] if len(args) > 0 else kwargs.get("from", 0.0)
    high = args[1] if len(args) > 1 else kwargs.get("to", 1.0)
    return self.copy_(
        uniform(scope.next_key(self.device), tuple(self.shape), self.dtype, low, high)
    )


def _normal_(scope, /, self, mean=0.0, std=1.0, *, generator=None):
    _no_generator("Tensor.normal_", generator)
    z = normal(scope.next_key(self.device), tuple(self.shape), self.dtype)
    return self.copy_(z * std + mean)


def _exponential_(scope, /, self, lambd=1.0, *, generator=None):
    _no_generator("Tensor.exponential_", generator)
    u = uniform(scope.next_key(self.device), tuple(self.shape), self.dtype)
    return self.copy_(-torch.log1p(-u) / lambd)  # 1 - u > 0, so finite


# nn.init functions that dispatch __torch_function__ themselves, so the scope sees them and not
# the Tensor.uniform_/normal_ inside them.


def _init_uniform(scope, /, tensor, a=0.0, b=1.0, generator=None):
    with torch.no_grad():
        return _uniform_(scope, tensor, a, b, generator=generator)


def _init_normal(scope, /, tensor, mean=0.0, std=1.0, generator=None):
    with torch.no_grad():
        return _normal_(scope, tensor, mean, std, generator=generator)


def _init_trunc_normal(scope, /, tensor, mean=0.0, std=1.0, a=-2.0, b=2.0, generator=None):
    # As torch.nn.init.trunc_normal_: inverse CDF of a uniform on the truncated range.
    _no_generator("nn.init.trunc_normal_", generator)
    cdf = lambda v: (1.0 + math.erf(v / math.sqrt(2.0))) / 2.0
    lo, hi = 2 * cdf((a - mean) / std) - 1, 2 * cdf((b - mean) / std) - 1
    u = uniform(scope.next_key(tensor.device), tuple(tensor.shape), tensor.dtype, lo, hi)
    with torch.no_grad():
        t = torch.erfinv(u) * (std * math.sqrt(2.0)) + mean
        return tensor.copy_(t.clamp(min=a, max=b))


def _init_kaiming_uniform(
    scope, /, tensor, a=0.0, mode="fan_in", nonlinearity="leaky_relu", generator=None, **kwargs
):
    if 0 in tensor.shape:
        return tensor
    fan = torch.nn.init._calculate_correct_fan(tensor, mode)
    bound = math.sqrt(3.0) * torch.nn.init.calculate_gain(nonlinearity, a) / math.sqrt(fan)
    return _init_uniform(scope, tensor, -bound, bound, generator)


def _rnn(name, lstm):
    def handler(scope, /, *args, **kwargs):
        # (input, hx, params, has_biases, num_layers, dropout, train, ...); the packed-sequence
        # overload has batch_sizes after input. An LSTM's hx is a tuple, a GRU's a tensor.
        packed = isinstance(args[1] if lstm else args[2], Tensor)
        dropout, train = args[6:8] if packed else args[5:7]
        if train and dropout > 0.0:
            raise NotImplementedError(
                f"nn.{name} with dropout > 0 in training draws inside torch.{name.lower()}, "
                "which functrain.random.keyed(...) cannot key. HINT: use dropout=0.0 and put "
                "nn.Dropout (keyed) between single-layer RNNs."
            )
        return _PASS

    return handler


_HANDLERS: dict[Callable, Callable] = {
    F.dropout: _f_dropout,
    F.alpha_dropout: _f_alpha_dropout,
    F.feature_alpha_dropout: _f_feature_alpha_dropout,
    F.dropout1d: _f_dropout1d,
    F.dropout2d: _f_dropout2d,
    F.dropout3d: _f_dropout3d,
    torch.dropout: _aten_dropout(False, False, False),
    torch.dropout_: _aten_dropout(False, False, True),
    torch.feature_dropout: _aten_dropout(True, False, False),
    torch.feature_dropout_: _aten_dropout(True, False, True),
    torch.alpha_dropout: _aten_dropout(False, True, False),
    torch.alpha_dropout_: _aten_dropout(False, True, True),
    torch.feature_alpha_dropout: _aten_dropout(True, True, False),
    torch.feature_alpha_dropout_: _aten_dropout(True, True, True),
    torch.native_dropout: _native_dropout,
    F.scaled_dot_product_attention: _sdpa,
    F.multi_head_attention_forward: _mha,
    F.rrelu: _f_rrelu,
    torch.rrelu: _rrelu(False),
    torch.rrelu_: _rrelu(True),
    F.gumbel_softmax: _gumbel_softmax,
    F.fractional_max_pool2d: _fractional_max_pool(2),
    F.fractional_max_pool2d_with_indices: _fractional_max_pool(2),
    F.fractional_max_pool3d: _fractional_max_pool(3),
    F.fractional_max_pool3d_with_indices: _fractional_max_pool(3),
    torch.rand: _rand,
    torch.randn: _randn,
    torch.rand_like: _rand_like,
    torch.randn_like: _randn_like,
    torch.randint: _randint,
    torch.randint_like: _randint_like,
    torch.randperm: _randperm,
    torch.normal: _torch_normal,
    torch.bernoulli: _bernoulli,
    Tensor.bernoulli: _bernoulli,
    Tensor.bernoulli_: _bernoulli_,
    Tensor.uniform_: _uniform_,
    Tensor.normal_: _normal_,
    Tensor.exponential_: _exponential_,
    torch.nn.init.uniform_: _init_uniform,
    torch.nn.init.normal_: _init_normal,
    torch.nn.init.trunc_normal_: _init_trunc_normal,
    torch.nn.init.kaiming_uniform_: _init_kaiming_uniform,
    torch.lstm: _rnn("LSTM", True),
    torch.gru: _rnn("GRU", False),
    torch.rnn_tanh: _rnn("RNN", False),
    torch.rnn_relu: _rnn("RNN", False),
}

_UNSUPPORTED: dict[Callable, tuple[str, str]] = {
    torch.multinomial: (
        "torch.multinomial",
        "sample with functrain.random.uniform and "
        "torch.searchsorted over the cumulative probabilities.",
    ),
    Tensor.multinomial: (
        "Tensor.multinomial",
        "sample with functrain.random.uniform and "
        "torch.searchsorted over the cumulative probabilities.",
    ),
    torch.poisson: ("torch.poisson", "draw outside the scope from an explicit generator."),
    torch.binomial: ("torch.binomial", "draw outside the scope from an explicit generator."),
    torch._standard_gamma: (
        "torch._standard_gamma (Gamma, Beta, Dirichlet sampling)",
        "draw outside the scope from an explicit generator.",
    ),
    torch._sample_dirichlet: (
        "torch._sample_dirichlet (Dirichlet sampling)",
        "draw outside the scope from an explicit generator.",
    ),
    Tensor.random_: ("Tensor.random_", "use torch.randint (keyed) or functrain.random.randint."),
    Tensor.geometric_: ("Tensor.geometric_", "transform functrain.random.uniform."),
    Tensor.log_normal_: ("Tensor.log_normal_", "use torch.exp of a keyed torch.randn."),
    Tensor.cauchy_: ("Tensor.cauchy_", "transform functrain.random.uniform."),
}
