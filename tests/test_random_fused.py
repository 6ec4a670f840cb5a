"""Keyed dropout and 32-bit draws fused by Inductor (functrain.random._lowering).

Compiled draws must equal eager draws bit for bit (the lowering builds Threefry from the same
function, in 32-bit lanes), be reproducible from the key, differ between keys, keep the right
fraction of elements, run inside the consumer's kernel (no opaque hash call), and compile once
without graph breaks inside a training step.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import functrain.random as R
from functrain import _compat
from functrain.random import _lowering


@pytest.fixture(autouse=True)
def _fresh_compile():
    # Inductor's FX graph cache does not hash lowerings: a cached kernel from another lowering
    # would hide the one under test.
    torch._dynamo.reset()
    with torch._inductor.config.patch(fx_graph_cache=False):
        yield
    torch._dynamo.reset()


def _keyed_dropout(x, key, p):
    with R.keyed(key):
        return F.dropout(x, p)


def _inductor(fn):
    return torch.compile(fn, backend="inductor", fullgraph=True, dynamic=False)


@pytest.mark.parametrize("shape", [(7, 13), (128, 512), (3, 5, 4, 2)])
@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_compiled_dropout_equals_eager_bit_for_bit(shape, p):
    # (7, 13) = 91 elements: a vector loop and a scalar tail in the generated kernel.
    compiled = _inductor(_keyed_dropout)
    for seed in (0, 1, 2**40 + 3):
        x = torch.randn(shape)
        key = R.key(seed)
        assert torch.equal(compiled(x, key, p), _keyed_dropout(x, key, p))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float64])
def test_compiled_dropout_equals_eager_in_other_dtypes(dtype):
    x = torch.randn(33, 17).to(dtype)
    assert torch.equal(_inductor(_keyed_dropout)(x, R.key(5), 0.25),
                       _keyed_dropout(x, R.key(5), 0.25))


def test_compiled_32_bit_draws_equal_eager():
    def draws(key):
        ks = R.split(key, 6)
        return (R.bits(ks[0], (300,)), R.uniform(ks[1], (301,)),
                R.uniform(ks[2], (302,), torch.bfloat16, -2.0, 3.0),
                R.uniform(ks[3], (303,), torch.float16), R.randint(ks[4], (304,), -5, 1000),
                R.bernoulli(ks[5], 0.3, (305,)))

    key = R.key(9)
    for e, c in zip(draws(key), _inductor(draws)(key), strict=True):
        assert torch.equal(e, c)


def test_int64_lanes_equal_eager_too(monkeypatch):
    # Draws above 2**31 elements hash in int64 lanes; force that path on a small draw.
    monkeypatch.setattr(_lowering, "_INT32_COUNTERS", 0)
    x = torch.randn(50, 9)
    assert torch.equal(_inductor(_keyed_dropout)(x, R.key(4), 0.3),
                       _keyed_dropout(x, R.key(4), 0.3))
    assert torch.equal(_inductor(lambda k: R.bits(k, (99,)))(R.key(4)), R.bits(R.key(4), (99,)))


def test_mask_is_jax_exact_bernoulli_of_the_draw_key():
    # Dropout keeps where uniform(fold_in(key, i)) < 1 - p: the mask jax.random.bernoulli gives.
    x, key, p = torch.ones(64, 64), R.key(3), 0.3
    keep = R.uniform(R.fold_in(key, 0), (64, 64)) < 1 - p
    expected = keep.float() / (1 - p)
    assert torch.equal(_inductor(_keyed_dropout)(x, key, p), expected)


@pytest.mark.parametrize(
    "p", [0.0, 1.0, 0.1, 0.5, 1 / 3, 2**-24, 1 - 2**-24, 0.7 + 2**-30, float("nan"), 1.5, -0.5]
)
def test_bernoulli_threshold_equals_float_compare(p):
    key = R.key(11)
    u = R.uniform(key, (4096,))
    assert torch.equal(R.bernoulli(key, p, (4096,)), u < p)


def test_reproducible_from_key_and_keys_differ():
    compiled = _inductor(_keyed_dropout)
    x = torch.ones(256, 256)
    a, b = compiled(x, R.key(1), 0.5), compiled(x, R.key(1), 0.5)
    c = compiled(x, R.key(2), 0.5)
    d = compiled(x, R.fold_in(R.key(1), 1), 0.5)
    assert torch.equal(a, b)
    assert not torch.equal(a, c) and not torch.equal(a, d)
    # Different keys agree on about half the elements, as independent masks do.
    assert abs((a == c).float().mean().item() - 0.5) < 0.01


@pytest.mark.parametrize("p", [0.1, 0.5])
def test_keep_rate_within_binomial_bounds(p):
    compiled = _inductor(_keyed_dropout)
    n = 1 << 16
    x = torch.ones(n)
    sd = math.sqrt(n * p * (1 - p))
    masks = []
    for i in range(8):
        keep = compiled(x, R.fold_in(R.key(0), i), p) != 0
        assert abs(keep.sum().item() - n * (1 - p)) < 5 * sd
        masks.append(keep.float())
    m = torch.stack(masks)
    c = m - m.mean()
    var = c.var().item()
    # Neighbouring elements and consecutive keys: |correlation| well below 5 / sqrt(samples).
    assert abs((c[:, 1:] * c[:, :-1]).mean().item() / var) < 5 / math.sqrt(8 * n)
    assert abs((c[1:] * c[:-1]).mean().item() / var) < 5 / math.sqrt(7 * n)
    # The row-wise keep rate of all eight masks together is binomial too.
    total = m.sum().item()
    assert abs(total - 8 * n * (1 - p)) < 5 * math.sqrt(8) * sd


def test_hash_is_fused_into_the_dropout_kernel():
    from torch._inductor.utils import run_and_get_code

    _, (code, *_) = run_and_get_code(_inductor(_keyed_dropout), torch.randn(64, 32), R.key(0),
                                     0.2)
    assert "torch.ops.functrain.threefry_bernoulli" not in code  # no opaque call
    assert "threefry_bernoulli" in code  # ... but a kernel that fuses it


def test_without_the_lowering_the_opaque_op_gives_the_same_bits(monkeypatch):
    R.bernoulli(R.key(0), 0.5, (2,))  # registers the operators
    from torch._inductor import lowering

    op = torch.ops.functrain.threefry_bernoulli.default
    saved = lowering.lowerings.pop(op, None)
    monkeypatch.setattr(_lowering, "register", lambda threefry2x32: False)
    monkeypatch.setattr(R._threefry, "_lowered", True)
    try:
        x = torch.randn(40, 40)
        fused_off = _inductor(_keyed_dropout)(x, R.key(6), 0.4)
        assert torch.equal(fused_off, _keyed_dropout(x, R.key(6), 0.4))
    finally:
        if saved is not None:
            lowering.lowerings[op] = saved


def test_training_step_compiles_once_without_graph_breaks():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Dropout(0.2), nn.Linear(32, 4))
    params = {k: v.detach() for k, v in model.named_parameters()}
    compiles = []

    def backend(gm, example_inputs):
        compiles.append(gm)
        return _compat.inductor_compile(gm, example_inputs)

    def step(params, x, y, rng, step):
        def loss_fn(params):
            with R.keyed(R.fold_in(rng, step)):
                out = torch.func.functional_call(model, params, (x,))
            return F.cross_entropy(out, y)

        grads = torch.func.grad(loss_fn)(params)
        return {k: v - 0.1 * grads[k] for k, v in params.items()}

    compiled = torch.compile(step, backend=backend, fullgraph=True)
    x, y, rng = torch.randn(8, 16), torch.randint(4, (8,)), R.key(0)
    p_eager = p_comp = params
    for s in range(3):
        p_eager = step(p_eager, x, y, rng, torch.tensor(s))
        p_comp = compiled(p_comp, x, y, rng, torch.tensor(s))
    assert len(compiles) == 1  # fullgraph=True: no graph break; one compile for three steps
    for k in params:  # the same masks: the weights stay close (matmul order may differ)
        torch.testing.assert_close(p_comp[k], p_eager[k], rtol=1e-5, atol=1e-6)


def test_python_int_path_equals_tensor_path():
    key = R.key(2**33 + 7)
    n = R._threefry._PYTHON_INTS
    ctr0 = torch.arange(n + 1) * 977
    ctr1 = torch.arange(n + 1) * 31337
    small = [R._threefry._threefry2x32_(key, ctr0[i:i + 1].clone(), ctr1[i:i + 1].clone())
             for i in range(n + 1)]
    big = R._threefry._threefry2x32_(key, ctr0.clone(), ctr1.clone())  # tensor path
    assert torch.equal(torch.cat([s[0] for s in small]), big[0])
    assert torch.equal(torch.cat([s[1] for s in small]), big[1])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
def test_compiled_normal_equals_eager(dtype):
    # Compiled, the uniform comes from the fused hash and the transform runs opaque; eagerly
    # both run chunk by chunk. 40000 elements: more than one CPU chunk.
    key = R.key(8)
    compiled = _inductor(lambda k: R.normal(k, (200, 200), dtype))(key)
    assert torch.equal(compiled, R.normal(key, (200, 200), dtype))


def test_normal_transform_matches_the_spelled_out_fma():
    # The erfinv polynomial's float64 addcmul equals XLA's float32 FMA as `_fma` spells it.
    u = R.uniform(R.key(1), (5000,), torch.float32, -1.0 + 2.0**-24, 1.0)
    w = -torch.log1p(-u * u)
    central = w < 5.0
    w = torch.where(central, w - 2.5, torch.sqrt(w) - 3.0)
    t = R._threefry
    p = torch.where(central, torch.tensor(t._ERFINV_CENTRAL[0]), torch.tensor(t._ERFINV_TAIL[0]))
    for c, tail in zip(t._ERFINV_CENTRAL[1:], t._ERFINV_TAIL[1:], strict=True):
        p = t._fma(p, w, torch.where(central, torch.tensor(c), torch.tensor(tail)))
    assert torch.equal(t._erfinv32(u), torch.where(u.abs() == 1, u * math.inf, p * u))
