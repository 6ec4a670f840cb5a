"""Draws against jax.random itself (skipped where jax is not installed).

`functrain.random` promises jax.random's numbers; these tests pin down exactly which draws are
bit-identical and how far the others may be, over many draws and several keys.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch

import functrain as ft

jax = pytest.importorskip("jax")
jnp = pytest.importorskip("jax.numpy")

N = 50_000
DTYPES = {  # torch dtype, jax dtype, integer view of the same width
    "float32": (torch.float32, "float32", torch.int32),
    "float16": (torch.float16, "float16", torch.int16),
    "bfloat16": (torch.bfloat16, "bfloat16", torch.int16),
}


def _bits(x: torch.Tensor, view: torch.dtype) -> np.ndarray:
    return x.view(view).numpy().astype(np.int64)


def _jax_bits(x, view: torch.dtype) -> np.ndarray:
    width = {torch.int32: np.int32, torch.int16: np.int16}[view]
    return np.asarray(x).view(width).astype(np.int64)


@functools.cache
def _float16_multiply_add_probe() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """XLA's float16 ``a * b + c`` on this machine beside the fused (one rounding) and the
    separately rounded results, over float16 values that tell the two apart."""
    a = np.arange(1, 2048, dtype=np.float16) / np.float16(2048)
    b, c = np.float16(0.6), np.float16(0.1)
    got = np.asarray(jax.jit(lambda a, b, c: a * b + c)(a, b, c))
    fused = (a.astype(np.float64) * float(b) + float(c)).astype(np.float16)
    separate = (a * b).astype(np.float16) + c  # numpy rounds each float16 op
    return got, fused, separate


def _xla_fuses_float16_multiply_add() -> bool:
    """Whether XLA's CPU code computes float16 ``a * b + c`` with one rounding on this machine
    (it does on some CPUs; on others, such as an Intel Xeon with AVX-512F but no AVX512-FP16,
    it rounds the product and the sum separately)."""
    got, fused, _ = _float16_multiply_add_probe()
    return bool((got == fused).all())


@pytest.mark.parametrize("name", DTYPES)
@pytest.mark.parametrize("bounds", [(0.1, 0.7), (-3.0, 5.5), (0.0, 1.0), (-1e-3, 2e-3)])
@pytest.mark.parametrize("seed", [0, 12345])
def test_uniform_with_any_bounds_is_bit_identical_to_jax(name, bounds, seed):
    dtype, jdtype, view = DTYPES[name]
    ours = ft.random.uniform(ft.random.key(seed), (N,), dtype, *bounds)
    theirs = jax.random.uniform(jax.random.PRNGKey(seed), (N,), getattr(jnp, jdtype), *bounds)
    if name == "float16" and not _xla_fuses_float16_multiply_add():
        # JAX's draws here round the product and the sum separately; ours stay fused (the same
        # on every CPU): compare with JAX's unit draws scaled by a fused multiply-add, as XLA
        # computes them where it fuses float16.
        unit = np.asarray(jax.random.uniform(jax.random.PRNGKey(seed), (N,), jnp.float16))
        lo = np.float16(bounds[0])
        span = np.float16(np.float16(bounds[1]) - lo)
        theirs = np.maximum((unit.astype(np.float64) * float(span) + float(lo)).astype(
            np.float16), lo)
    np.testing.assert_array_equal(_bits(ours, view), _jax_bits(theirs, view))


def test_the_float16_multiply_add_probe_tells_fused_from_separate_rounding():
    got, fused, separate = _float16_multiply_add_probe()
    assert separate.dtype == np.float16 and (fused != separate).any()  # tells them apart
    assert (got == fused).all() or (got == separate).all()  # XLA does one or the other


@pytest.mark.parametrize("name", ["float16", "bfloat16"])
@pytest.mark.parametrize("seed", [0, 7])
def test_normal_in_16_bit_dtypes_is_bit_identical_to_jax(name, seed):
    dtype, jdtype, view = DTYPES[name]
    ours = ft.random.normal(ft.random.key(seed), (N,), dtype)
    theirs = jax.random.normal(jax.random.PRNGKey(seed), (N,), getattr(jnp, jdtype))
    np.testing.assert_array_equal(_bits(ours, view), _jax_bits(theirs, view))


@pytest.mark.parametrize("seed", [0, 7])
def test_normal_in_float32_is_within_3_ulp_of_jax(seed):
    """XLA's float32 log1p is not correctly rounded; ~1% of draws differ, by at most 3 ULP."""
    ours = _bits(ft.random.normal(ft.random.key(seed), (N,)), torch.int32)
    theirs = _jax_bits(jax.random.normal(jax.random.PRNGKey(seed), (N,)), torch.int32)
    ulps = np.abs(ours - theirs)
    assert ulps.max() <= 3
    assert (ulps == 0).mean() >= 0.98


def test_normal_eager_equals_compiled():
    key = ft.random.key(3)
    eager = ft.random.normal(key, (4096,))
    compiled = torch.compile(lambda k: ft.random.normal(k, (4096,)), fullgraph=True)(key)
    torch.testing.assert_close(compiled, eager, rtol=0, atol=0)
