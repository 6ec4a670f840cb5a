"""Per-example gradients and DP-SGD, against torch.func loops and opacus."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from torch import nn

import functrain as ft
from functrain import privacy


def _cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv1d(1, 4, 5, padding=2), nn.ReLU(), nn.GroupNorm(2, 4),
                         nn.Flatten(), nn.Linear(4 * 12, 3))


def _batch(n=8, seed=1, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, 1, 12, generator=g, dtype=dtype),
            torch.randint(0, 3, (n,), generator=g))


def _loss_fn(model):
    def loss_fn(params, x, y):
        out, _ = ft.call(model, params, {}, x)
        return nn.functional.cross_entropy(out, y)

    return loss_fn


def test_per_example_grads_equal_a_loop_of_single_example_grads():
    model = _cnn().double()
    params, _ = ft.split_module(model)
    x, y = _batch(dtype=torch.float64)
    loss_fn = _loss_fn(model)
    grads, losses = ft.per_example_grads(loss_fn)(params, x, y)
    assert losses.shape == (8,)
    for i in range(8):
        g_i = torch.func.grad(loss_fn)(params, x[i:i + 1], y[i:i + 1])
        for k in params:
            torch.testing.assert_close(grads[k][i], g_i[k], rtol=1e-12, atol=1e-12)
        assert losses[i].item() == pytest.approx(loss_fn(params, x[i:i + 1], y[i:i + 1]).item())
    # the mean of per-example grads is the batch gradient of a mean loss
    full = torch.func.grad(loss_fn)(params, x, y)
    for k in params:
        torch.testing.assert_close(grads[k].mean(0), full[k], rtol=1e-10, atol=1e-12)


def test_per_example_grads_options():
    def loss_fn(w, x):  # written for one example (no batch dimension), with aux
        return (w * x).sum() ** 2, x.sum()

    w, x = torch.ones(3), torch.arange(6.0).reshape(2, 3)
    grads, (losses, aux) = ft.per_example_grads(loss_fn, has_aux=True,
                                                keep_batch_dim=False)(w, x)
    torch.testing.assert_close(grads, 2 * (x * w).sum(1, keepdim=True) * x)
    torch.testing.assert_close(losses, torch.tensor([9.0, 144.0]))
    torch.testing.assert_close(aux, torch.tensor([3.0, 12.0]))
    grads, _ = ft.per_example_grads(lambda x, w: ((w * x).sum(-1) ** 2).mean(),
                                    argnums=1)(x, w)
    assert grads.shape == (2, 3)
    with pytest.raises(TypeError, match=r"loss_fn: expected a callable"):
        ft.per_example_grads(3)
    with pytest.raises(TypeError, match=r"argnums: expected an int"):
        ft.per_example_grads(loss_fn, argnums=(0, 1))


def _opacus_step(model, x, y, clip, noise, batch_size):
    from opacus import GradSampleModule
    from opacus.optimizers import DPOptimizer

    gsm = GradSampleModule(model)
    opt = DPOptimizer(torch.optim.SGD(gsm.parameters(), lr=1.0), noise_multiplier=noise,
                      max_grad_norm=clip, expected_batch_size=batch_size)
    opt.zero_grad()
    nn.functional.cross_entropy(gsm(x), y).backward()
    grad_sample = {k: p.grad_sample.clone() for k, p in gsm._module.named_parameters()}
    opt.pre_step()  # clip, accumulate, add noise, scale
    summed = {k: p.summed_grad.clone() for k, p in gsm._module.named_parameters()}
    final = {k: p.grad.clone() for k, p in gsm._module.named_parameters()}
    return grad_sample, summed, final


@pytest.mark.parametrize("clip", [0.05, 1.0, 100.0])  # most, some, no examples clipped
def test_clipped_sum_equals_opacus_grad_sample_module(clip):
    pytest.importorskip("opacus")
    model = _cnn()
    params, _ = ft.split_module(model)
    x, y = _batch(16)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # opacus' secure-RNG notice
        # a copy: opacus leaves its hooks on the module it wraps
        grad_sample, summed_ref, final_ref = _opacus_step(copy.deepcopy(model), x, y, clip,
                                                          0.0, 16)
    grads, _ = ft.per_example_grads(_loss_fn(model))(params, x, y)
    summed, norms = privacy.clip_per_example(grads, clip)
    mean = privacy.dp_grads(_loss_fn(model), l2_norm_clip=clip, noise_multiplier=0.0)(
        params, ft.random.key(0), x, y)[0]
    for k in params:
        torch.testing.assert_close(grads[k], grad_sample[k], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(summed[k], summed_ref[k], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(mean[k], final_ref[k], rtol=1e-5, atol=1e-6)
    clipped = (norms > clip).sum().item()
    if clip != 1.0:
        assert clipped == {0.05: 16, 100.0: 0}[clip]


@pytest.mark.parametrize("has_aux", [False, True])
def test_dp_grads_keeps_float64_and_equals_clipping_the_per_example_grads(has_aux):
    """In float64, dp_grads without noise is the clipped per-example sum over B to 1e-12 (its
    norms and noise sum were computed in float32 before); clip 0.05: most examples clip."""
    model = _cnn().double()
    params, _ = ft.split_module(model)
    x, y = _batch(dtype=torch.float64)
    plain = _loss_fn(model)

    def loss_fn(p, x, y):
        return (plain(p, x, y), x.sum()) if has_aux else plain(p, x, y)

    grads, _ = ft.per_example_grads(plain)(params, x, y)
    summed, norms = privacy.clip_per_example(grads, 0.05)
    assert norms.dtype == torch.float64 and (norms > 0.05).sum() >= 6
    got, value = privacy.dp_grads(loss_fn, l2_norm_clip=0.05, noise_multiplier=0.0,
                                  has_aux=has_aux)(params, ft.random.key(0), x, y)
    for k in params:
        torch.testing.assert_close(got[k], summed[k] / 8, rtol=1e-12, atol=1e-14)
    loss = value[0] if has_aux else value
    torch.testing.assert_close(loss, plain(params, x, y), rtol=1e-12, atol=0)
    if has_aux:
        torch.testing.assert_close(value[1], x.sum((1, 2)))


def test_noise_is_one_draw_from_the_key_cut_in_leaf_order():
    summed = {"a": torch.zeros(3, 4), "b": torch.ones(5)}
    key = ft.random.key(7)
    out = privacy.add_noise(summed, key, l2_norm_clip=0.5, noise_multiplier=2.0, batch_size=4)
    # leaves in functrain.tree order: "a" takes the first 12 values, "b" the next 5
    z = ft.random.normal(key, (17,))
    ref_a = (1.0 * z[:12].reshape(3, 4)) / 4
    ref_b = (1 + 1.0 * z[12:]) / 4
    torch.testing.assert_close(out["a"], ref_a)
    torch.testing.assert_close(out["b"], ref_b)
    again = privacy.add_noise(summed, key, l2_norm_clip=0.5, noise_multiplier=2.0, batch_size=4)
    assert torch.equal(out["a"], again["a"])  # a pure function of the key
    big = privacy.add_noise({"w": torch.zeros(200_000)}, ft.random.key(1), l2_norm_clip=1.5,
                            noise_multiplier=0.8, batch_size=3)["w"]
    assert big.std().item() == pytest.approx(0.8 * 1.5 / 3, rel=0.01)
    assert abs(big.mean().item()) < 0.01


def test_dp_sgd_step_compiles_once_and_equals_eager():
    model = _cnn()
    loss_fn = _loss_fn(model)
    private = privacy.dp_grads(loss_fn, l2_norm_clip=1.0, noise_multiplier=1.1)

    def step(state, batch):
        key = ft.random.fold_in(state.rng, state.step)
        grads, loss = private(state.params, key, *batch)
        return state.apply_gradients(grads), {"loss": loss}

    data = [_batch(16, seed=s) for s in range(4)]
    results = []
    for compile in ("eager", "auto"):
        run = ft.compile_step(step, compile=compile, on_recompile="raise")
        state = ft.TrainState.create(model, ft.optim.sgd(0.1), seed=3)
        for b in data:
            state, _ = run(state, b)
        results.append((state, run))
    assert results[1][1].compiles == 1
    for k in results[0][0].params:
        torch.testing.assert_close(results[1][0].params[k], results[0][0].params[k],
                                   rtol=1e-4, atol=1e-5)


def test_epsilon_equals_opacus_privacy_engine():
    pytest.importorskip("opacus")
    from opacus import PrivacyEngine
    from opacus.accountants import PRVAccountant, RDPAccountant

    model = _cnn()
    x, y = _batch(64)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=16)
    engine = PrivacyEngine(accountant="rdp")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m, opt, dl = engine.make_private(module=model, optimizer=torch.optim.SGD(
            model.parameters(), lr=0.1), data_loader=loader, noise_multiplier=1.3,
            max_grad_norm=1.0)
        steps = 0
        for _ in range(3):
            for bx, by in dl:
                opt.zero_grad()
                if len(bx):
                    nn.functional.cross_entropy(m(bx), by).backward()
                opt.step()
                steps += 1
        expected = engine.get_epsilon(1e-5)
    assert steps == 12
    got = privacy.epsilon(noise_multiplier=1.3, sample_rate=1 / len(loader), steps=steps,
                          delta=1e-5)
    assert got == pytest.approx(expected, rel=1e-12)
    for name, cls in (("rdp", RDPAccountant), ("prv", PRVAccountant)):
        acc = cls()
        for _ in range(300):
            acc.step(noise_multiplier=0.9, sample_rate=0.01)
        assert privacy.epsilon(noise_multiplier=0.9, sample_rate=0.01, steps=300, delta=1e-6,
                               accountant=name) == pytest.approx(acc.get_epsilon(1e-6),
                                                                 rel=1e-9)
    from opacus.accountants.utils import get_noise_multiplier

    assert privacy.noise_multiplier_for(target_epsilon=2.0, delta=1e-5, sample_rate=0.01,
                                        steps=500) == get_noise_multiplier(
        target_epsilon=2.0, target_delta=1e-5, sample_rate=0.01, steps=500)
    assert privacy.epsilon(noise_multiplier=1.0, sample_rate=0.1, steps=0, delta=1e-5) == 0.0


def test_privacy_errors_name_the_argument():
    with pytest.raises(ValueError, match=r"l2_norm_clip: expected a number in \(0, inf\)"):
        privacy.dp_grads(lambda p, x: x.sum(), l2_norm_clip=0.0, noise_multiplier=1.0)
    with pytest.raises(ValueError, match=r"noise_multiplier: expected a number in \[0, inf\)"):
        privacy.dp_grads(lambda p, x: x.sum(), l2_norm_clip=1.0, noise_multiplier=-1.0)
    with pytest.raises(ValueError, match=r"accountant: expected one of 'rdp', 'prv', 'gdp'"):
        privacy.epsilon(noise_multiplier=1.0, sample_rate=0.1, steps=3, delta=1e-5,
                        accountant="moments")
    with pytest.raises(ValueError, match=r"delta: expected a number in \(0, 1\)"):
        privacy.epsilon(noise_multiplier=1.0, sample_rate=0.1, steps=3, delta=1.0)
    with pytest.raises(ValueError, match=r"grads\['b'\]: expected a leading batch dimension "
                                         r"of 4"):
        privacy.clip_per_example({"a": torch.ones(4, 2), "b": torch.ones(3, 2)}, 1.0)
    with pytest.raises(TypeError, match=r"grads\['a'\]: expected a tensor with a leading batch "
                                        r"dimension.*HINT"):
        privacy.clip_per_example({"a": torch.tensor(1.0)}, 1.0)


def test_dp_sgd_example_short_run(tmp_path):
    import os
    import subprocess
    import sys

    pytest.importorskip("opacus")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run(
        [sys.executable, "examples/dp_sgd.py", "--steps", "40", "--compile", "eager",
         "--run-dir", str(tmp_path)],
        cwd=root, env={**os.environ, "PYTHONPATH": root}, capture_output=True, text=True,
        timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "test accuracy:" in out.stdout and "epsilon = " in out.stdout
