"""Float64 trajectory parity with optax itself (and optax.contrib), for every alias, transform
and schedule that ``torch.optim`` lacks.

Each case trains the same small problem (a one-layer tanh regression, a (4, 3) matrix and a
(3,) bias) twice from the same start: with ``functrain.optim`` (gradients from
``torch.func.grad``) and with optax under ``jax.enable_x64`` (gradients from ``jax.grad``).
Params after each of the 200 steps must agree to 1e-10 relative. Skipped where jax or optax is
not installed.

Randomness: `add_noise`/`noisy_sgd` draw with `functrain.random` (Threefry, like
``jax.random``) from the same key recipe as optax; the bits are JAX's, and the normals agree
with ``jax.random.normal`` up to ``erfinv``'s rounding, so those trajectories are compared at
1e-6 (and the noise is also checked distributionally).
"""

from __future__ import annotations

import functools
import math

import numpy as np
import pytest
import torch

from functrain import optim

jax = pytest.importorskip("jax")
optax = pytest.importorskip("optax")
jnp = jax.numpy
contrib = pytest.importorskip("optax.contrib")

STEPS = 200
RTOL, ATOL = 1e-10, 1e-12


@pytest.fixture(autouse=True)
def _float64():
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    with jax.enable_x64(True):
        yield
    torch.set_default_dtype(old)


def _data():
    g = torch.Generator().manual_seed(0)
    init = {"w": torch.randn(4, 3, generator=g, dtype=torch.float64) * 0.5,
            "b": torch.randn(3, generator=g, dtype=torch.float64) * 0.5}
    x = torch.randn(16, 4, generator=g, dtype=torch.float64)
    y = torch.randn(16, 3, generator=g, dtype=torch.float64) * 0.5
    return init, x, y


def _loss(xp, params, x, y):
    return xp.mean((xp.tanh(x @ params["w"] + params["b"]) - y) ** 2)


def _to_np(tree):
    return {k: v.detach().numpy().copy() for k, v in tree.items()}


def run_ours(opt, steps=STEPS, extra=None, init=None, every_step=None):
    params0, x, y = _data()
    params = init(params0) if init else params0
    state = opt.init(params)
    value_and_grad = torch.func.grad_and_value(lambda p: _loss(torch, p, x, y))
    out = []
    for _ in range(steps):
        grads, loss = value_and_grad(params)
        kw = extra(loss, grads) if extra else {}
        updates, state = opt.update(grads, state, params, **kw)
        params = optim.apply_updates(params, updates)
        out.append(every_step(params, state) if every_step else params)
    return out


def run_optax(opt, steps=STEPS, extra=None, init=None, every_step=None, jit=True):
    params0, x, y = _data()
    params0 = {k: jnp.asarray(v) for k, v in _to_np(params0).items()}
    x, y = jnp.asarray(x.numpy()), jnp.asarray(y.numpy())
    params = init(params0) if init else params0
    state = opt.init(params)
    value_and_grad = jax.jit(jax.value_and_grad(lambda p: _loss(jnp, p, x, y)))
    update = jax.jit(opt.update) if jit else opt.update  # jit: the same math, ~100x faster
    out = []
    for _ in range(steps):
        loss, grads = value_and_grad(params)
        kw = extra(loss, grads) if extra else {}
        updates, state = update(grads, state, params, **kw)
        params = optax.apply_updates(params, updates)
        out.append(every_step(params, state) if every_step else params)
    return out


def assert_close(ours, ref, rtol=RTOL, atol=ATOL):
    assert len(ours) == len(ref)
    for k in ref[0]:
        a = torch.stack([p[k] for p in ours])
        b = torch.stack([torch.from_numpy(np.array(p[k])) for p in ref])
        assert a.dtype == b.dtype == torch.float64
        torch.testing.assert_close(a, b, rtol=rtol, atol=atol,
                                   msg=lambda m, k=k: f"{k} (index = (step, ...)): {m}")
    # The trajectory must actually move, or the comparison proves nothing.
    assert any(not np.allclose(np.asarray(ref[0][k]), np.asarray(ref[-1][k])) for k in ref[0])


def _f64(schedule):
    """optax evaluates schedules of its int32 step counts in float32 even under x64; give it the
    count as a float64 so that both sides compute the schedule in float64."""
    return lambda count: schedule(jnp.asarray(count, jnp.float64))


def _both(name, *args, **kwargs):
    """The same call in both libraries: ``optim.name`` and ``optax.name`` (or optax.contrib's)."""
    ref = getattr(optax, name, None) or getattr(contrib, name)
    return (lambda: getattr(optim, name)(*args, **kwargs), lambda: ref(*args, **kwargs))


def _chain(make, *names_args):
    """``chain(t1(...), t2(...), ...)`` in one library, from (name, args, kwargs) triples."""
    return make.chain(*[getattr(make, n, None)(*a, **k) if getattr(make, n, None) else
                        getattr(contrib, n)(*a, **k) for n, a, k in names_args])


def _pair_chain(*names_args):
    return (lambda: _chain(optim, *names_args), lambda: _chain(optax, *names_args))


ALIASES = {
    "adabelief": _both("adabelief", 1e-2),
    "adabelief_nesterov": _both("adabelief", 1e-2, nesterov=True),
    "adadelta": _both("adadelta", 0.5, rho=0.8, weight_decay=0.01),
    "adamax": _both("adamax", 1e-2),
    "adamaxw": _both("adamaxw", 1e-2, weight_decay=0.1),
    "amsgrad": _both("amsgrad", 1e-2),
    "amsgrad_raw_nu": _both("amsgrad", 1e-2, bias_correction_nu=False),
    "adan": _both("adan", 1e-2, weight_decay=0.01),
    "fromage": _both("fromage", 1e-2),
    "lars": _both("lars", 0.5, weight_decay=1e-3, trust_coefficient=0.01),
    "lamb": _both("lamb", 1e-2, weight_decay=0.01),
    "nadam": _both("nadam", 1e-2),
    "nadamw": _both("nadamw", 1e-2, weight_decay=0.1),
    # lr 3e-3: at 1e-2 NovoGrad's per-leaf normalization by |g| meets gradients small enough
    # near convergence that rounding differences grow to ~1e-9 by step 180.
    "novograd": _both("novograd", 3e-3, weight_decay=0.01),
    "optimistic_gradient_descent": _both("optimistic_gradient_descent", 1e-2, beta=0.5),
    "radam": _both("radam", 1e-2),
    "radam_nesterov": _both("radam", 1e-2, nesterov=True),
    # rprop: not compared. optax 0.2.8's scale_by_rprop returns the *previous* step's update
    # (its first update is zero); ours is torch.optim.Rprop's (tested in float64 there).
    "sign_sgd": _both("sign_sgd", 1e-3),
    "signum": _both("signum", 1e-3),
    "sm3": _both("sm3", 1e-2),
    "yogi": _both("yogi", 1e-2),
    "adopt": _both("adopt", 1e-2),
    "adopt_nesterov_no_clip": _both("adopt", 1e-2, nesterov=True, use_clipping=False),
    "ademamix": _both("ademamix", 1e-2, weight_decay=0.01),
    "prodigy": _both("prodigy", weight_decay=0.01),
    "prodigy_safeguard": _both("prodigy", 0.5, safeguard_warmup=True),
    # (with warmup_steps optax's schedule runs in float32: see test_schedule_free_with_warmup)
    "schedule_free_sgd": _both("schedule_free_sgd", 0.1, weight_decay=0.01),
    "schedule_free_adamw": _both("schedule_free_adamw", 1e-2, weight_decay=0.01),
    # weight decay as a schedule (optax takes one; so do we)
    "adamw_wd_schedule": (
        lambda: optim.adamw(1e-2, weight_decay=optim.linear_schedule(0.1, 0.0, 100)),
        lambda: optax.adamw(1e-2, weight_decay=_f64(optax.linear_schedule(0.1, 0.0, 100)))),
    "lion_wd_schedule": (
        lambda: optim.lion(1e-3, weight_decay=optim.cosine_decay_schedule(0.5, 100)),
        lambda: optax.lion(1e-3, weight_decay=_f64(optax.cosine_decay_schedule(0.5, 100)))),
}

TRANSFORMS = {
    "clip_by_block_rms": _pair_chain(("clip_by_block_rms", (0.05,), {}),
                                     ("sgd", (0.5,), {})),
    "adaptive_grad_clip": _pair_chain(("adaptive_grad_clip", (0.02,), {}),
                                      ("sgd", (0.5,), {})),
    "adaptive_grad_clip_axis": (
        lambda: optim.chain(optim.masked(optim.adaptive_grad_clip(0.02, axis=1),
                                         {"w": True, "b": False}), optim.sgd(0.5)),
        lambda: optax.chain(optax.masked(optax.adaptive_grad_clip(0.02, axis=1),
                                         {"w": True, "b": False}), optax.sgd(0.5))),
    "zero_nans": _pair_chain(("zero_nans", (), {}), ("adam", (1e-2,), {})),
    "centralize": _pair_chain(("centralize", (), {}), ("sgd", (0.5,), {"momentum": 0.9})),
    "scale_by_trust_ratio": _pair_chain(("scale_by_trust_ratio", (), {"eps": 1e-3}),
                                        ("sgd", (1e-2,), {})),
    "normalize_by_update_norm": _pair_chain(("normalize_by_update_norm", (), {}),
                                            ("sgd", (1e-2,), {})),
    "keep_params_nonnegative": _pair_chain(("sgd", (0.5,), {}),
                                           ("keep_params_nonnegative", (), {})),
    "apply_every": _pair_chain(("sgd", (0.5,), {"momentum": 0.5}), ("apply_every", (3,), {})),
    "scale_by_param_block_norm": _pair_chain(("scale_by_param_block_norm", (), {}),
                                             ("sgd", (1e-2,), {})),
    "scale_by_param_block_rms": _pair_chain(("scale_by_param_block_rms", (), {}),
                                            ("sgd", (1e-2,), {})),
    "add_decayed_weights_schedule": (
        lambda: optim.chain(optim.add_decayed_weights(optim.exponential_decay(0.1, 10, 0.5)),
                            optim.sgd(0.1)),
        lambda: optax.chain(
            optax.add_decayed_weights(_f64(optax.exponential_decay(0.1, 10, 0.5))),
            optax.sgd(0.1))),
    "ema": _pair_chain(("ema", (0.9,), {}), ("sgd", (0.5,), {})),
    "flatten": (lambda: optim.flatten(optim.adam(1e-2)),
                lambda: optax.flatten(optax.adam(1e-2))),
    "freeze": (lambda: optim.chain(optim.freeze({"w": False, "b": True}), optim.adam(1e-2)),
               lambda: optax.chain(optax.freeze({"w": False, "b": True}), optax.adam(1e-2))),
    "partition": (lambda: optim.partition({"a": optim.adam(1e-2), "s": optim.sgd(0.1)},
                                          {"w": "a", "b": "s"}),
                  lambda: optax.partition({"a": optax.adam(1e-2), "s": optax.sgd(0.1)},
                                          {"w": "a", "b": "s"})),
    "selective_transform": (
        lambda: optim.selective_transform(optim.adam(1e-2), freeze_mask={"w": False, "b": True}),
        lambda: optax.transforms.selective_transform(optax.adam(1e-2),
                                                     freeze_mask={"w": False, "b": True})),
    "multisteps_f64": (
        lambda: optim.MultiSteps(optim.adam(1e-2), 3, accumulator_dtype=torch.float64),
        lambda: optax.MultiSteps(optax.adam(1e-2), 3, accumulator_dtype=jnp.float64)),
    "multisteps_sum_schedule": (
        lambda: optim.MultiSteps(optim.sgd(0.1), lambda s: 1 + s % 3, use_grad_mean=False,
                                 accumulator_dtype=None),
        lambda: optax.MultiSteps(optax.sgd(0.1), lambda s: 1 + s % 3, use_grad_mean=False,
                                 accumulator_dtype=jnp.float64)),
    "multisteps_skip_large": (
        lambda: optim.MultiSteps(optim.adam(1e-2), 2, accumulator_dtype=None,
                                 should_skip_update_fn=functools.partial(
                                     optim.skip_large_updates, max_squared_norm=0.1)),
        lambda: optax.MultiSteps(optax.adam(1e-2), 2, accumulator_dtype=jnp.float64,
                                 should_skip_update_fn=functools.partial(
                                     optax.skip_large_updates, max_squared_norm=0.1))),
}


@pytest.mark.parametrize("case", sorted(ALIASES) + sorted(TRANSFORMS))
def test_matches_optax(case):
    ours, ref = {**ALIASES, **TRANSFORMS}[case]
    assert_close(run_ours(ours()), run_optax(ref()))


def _value(loss, grads):
    return {"value": loss}


@pytest.mark.parametrize("variant", ["sps", "sps+"])
def test_polyak_sgd_matches_optax(variant):
    kw = dict(max_learning_rate=0.5, scaling=0.5, f_min=0.05, variant=variant)
    assert_close(run_ours(optim.polyak_sgd(**kw), extra=_value),
                 run_optax(optax.polyak_sgd(**kw), extra=_value))


def test_reduce_on_plateau_matches_optax():
    kw = dict(factor=0.5, patience=2, rtol=1e-3, cooldown=3, accumulation_size=2,
              min_scale=0.01)

    def ours():
        return optim.chain(optim.sgd(2.0, momentum=0.9), optim.reduce_on_plateau(**kw))

    def ref():
        return optax.chain(optax.sgd(2.0, momentum=0.9), contrib.reduce_on_plateau(**kw))

    scale_ours = run_ours(ours(), extra=_value, every_step=lambda p, s: {"scale": s[1].scale})
    scale_ref = run_optax(ref(), extra=_value, every_step=lambda p, s: {"scale": s[1].scale})
    # The scale must actually drop, or the comparison proves little.
    assert scale_ours[-1]["scale"].item() < 1.0
    torch.testing.assert_close(torch.stack([s["scale"] for s in scale_ours]),
                               torch.tensor([float(s["scale"]) for s in scale_ref]))
    assert_close(run_ours(ours(), extra=_value), run_optax(ref(), extra=_value))


def test_schedule_free_eval_params_match_optax():
    ours = run_ours(optim.schedule_free_adamw(1e-2),
                    every_step=lambda p, s: optim.schedule_free_eval_params(s, p))
    ref = run_optax(contrib.schedule_free_adamw(1e-2),
                    every_step=lambda p, s: contrib.schedule_free_eval_params(s, p))
    assert_close(ours, ref)


@pytest.mark.parametrize("name", ["schedule_free_sgd", "schedule_free_adamw"])
def test_schedule_free_with_warmup_matches_optax_up_to_its_float32_schedule(name):
    # optax's warm-up schedule of an int32 count is float32 even under x64; ours is float64.
    ours, ref = _both(name, 0.05, warmup_steps=10)
    assert_close(run_ours(ours()), run_optax(ref()), rtol=1e-4, atol=1e-7)


def test_sam_transparent_matches_optax():
    ours = optim.sam(optim.adam(1e-2), optim.chain(optim.normalize(), optim.sgd(0.05)),
                     sync_period=3)
    ref = contrib.sam(optax.adam(1e-2), optax.chain(contrib.normalize(), optax.sgd(0.05)),
                      sync_period=3)
    assert_close(run_ours(ours), run_optax(ref))


def test_sam_opaque_matches_optax():
    _, x, y = _data()
    jx, jy = jnp.asarray(x.numpy()), jnp.asarray(y.numpy())
    torch_grad = torch.func.grad(lambda p: _loss(torch, p, x, y))
    jax_grad = jax.grad(lambda p: _loss(jnp, p, jx, jy))
    ours = optim.sam(optim.sgd(0.1), optim.chain(optim.normalize(), optim.sgd(0.05)),
                     opaque_mode=True)
    ref = contrib.sam(optax.sgd(0.1), optax.chain(contrib.normalize(), optax.sgd(0.05)),
                      opaque_mode=True)
    assert_close(run_ours(ours, extra=lambda loss, g: {"grad_fn": lambda p, i: torch_grad(p)}),
                 run_optax(ref, extra=lambda loss, g: {"grad_fn": lambda p, i: jax_grad(p)},
                           jit=False))


def test_lookahead_matches_optax():
    ours = optim.lookahead(optim.adam(1e-2), sync_period=5, slow_step_size=0.5,
                           reset_state=True)
    ref = optax.lookahead(optax.adam(1e-2), sync_period=5, slow_step_size=0.5, reset_state=True)

    # Lookahead's params are (fast, slow) pairs; gradients are those of the fast params.
    params0, x, y = _data()
    grad_t = torch.func.grad(lambda p: _loss(torch, p, x, y))
    p = optim.LookaheadParams.init_synced(params0)
    state = ours.init(p)
    jx, jy = jnp.asarray(x.numpy()), jnp.asarray(y.numpy())
    grad_j = jax.grad(lambda q: _loss(jnp, q, jx, jy))
    jp0 = {k: jnp.asarray(v) for k, v in _to_np(params0).items()}
    q = optax.LookaheadParams.init_synced(jp0)
    jstate = ref.init(q)
    ours_traj, ref_traj = [], []
    for _ in range(STEPS):
        u, state = ours.update(grad_t(p.fast), state, p)
        p = optim.apply_updates(p, u)
        v, jstate = ref.update(grad_j(q.fast), jstate, q)
        q = optax.apply_updates(q, v)
        ours_traj.append({"fast_w": p.fast["w"], "slow_w": p.slow["w"], "slow_b": p.slow["b"]})
        ref_traj.append({"fast_w": q.fast["w"], "slow_w": q.slow["w"], "slow_b": q.slow["b"]})
    assert_close(ours_traj, ref_traj)


def test_factored_rms_matches_optax_with_a_float64_decay():
    # optax computes the decay 1 - (t + 1)**-0.8 in float32 whatever the dtype; both sides get
    # a float64 rule here (ours computes it in the leaf's dtype by default).
    def ours():
        return optim.chain(
            optim.scale_by_factored_rms(min_dim_size_to_factor=3,
                                        decay_rate_fn=lambda t, r: 1 - (t + 1.0) ** -r),
            optim.clip_by_block_rms(1.0), optim.scale_by_param_block_rms(), optim.scale(-1e-2))

    def ref():
        return optax.chain(
            optax.scale_by_factored_rms(min_dim_size_to_factor=3,
                                        decay_rate_fn=lambda t, r: 1 - (t + 1.0) ** -r),
            optax.clip_by_block_rms(1.0), optax.scale_by_param_block_rms(), optax.scale(-1e-2))

    assert_close(run_ours(ours()), run_optax(ref()))


def test_adafactor_alias_matches_optax_up_to_its_float32_decay():
    kw = dict(learning_rate=1e-2, min_dim_size_to_factor=3, momentum=0.9,
              weight_decay_rate=1e-3)
    assert_close(run_ours(optim.adafactor(**kw)), run_optax(optax.adafactor(**kw)), rtol=1e-4,
                 atol=1e-7)


def test_noisy_sgd_matches_optax_noise_up_to_erfinv_rounding():
    # The same key recipe: optax splits jax.random.key(0); ours functrain.random.key(0).
    assert_close(run_ours(optim.noisy_sgd(1e-2, eta=0.01, key=0)),
                 run_optax(optax.noisy_sgd(1e-2, eta=0.01, key=0)), rtol=1e-6, atol=1e-9)


def test_add_noise_is_gaussian_with_the_scheduled_variance():
    eta, gamma, n = 0.5, 0.55, 200_000
    opt = optim.add_noise(eta, gamma, key=3)
    zeros = {"a": torch.zeros(n), "b": torch.zeros(n // 2, 2)}
    state = opt.init(zeros)
    for t in (1, 2, 3):
        noise, state = opt.update(zeros, state)
        z = torch.cat([noise["a"], noise["b"].reshape(-1)]) / math.sqrt(eta / t**gamma)
        assert abs(z.mean().item()) < 0.01 and abs(z.std().item() - 1) < 0.01
        assert abs(((z.abs() < 1).double().mean() - 0.6827).item()) < 0.005
    assert not torch.equal(noise["a"][: n // 2], noise["b"][:, 0])  # a key per leaf


SCHEDULES = {
    "piecewise_interpolate_linear": ("piecewise_interpolate_schedule",
                                     ("linear", 1.0, {10: 0.5, 25: 0.1, 25 + 1: 2.0}), {}),
    "piecewise_interpolate_cosine": ("piecewise_interpolate_schedule",
                                     ("cosine", 2.0, {5: 0.1, 40: 3.0}), {}),
    "piecewise_interpolate_empty": ("piecewise_interpolate_schedule", ("linear", 0.3), {}),
    "linear_onecycle": ("linear_onecycle_schedule", (60, 0.5), {}),
    "cosine_onecycle": ("cosine_onecycle_schedule", (60, 0.5), {"pct_start": 0.25}),
    "warmup_constant": ("warmup_constant_schedule", (0.1, 1.0, 13), {}),
    "warmup_exponential_decay": ("warmup_exponential_decay_schedule",
                                 (0.0, 1.0, 10, 7, 0.5), {"transition_begin": 3,
                                                          "staircase": True,
                                                          "end_value": 0.05}),
    "sgdr": ("sgdr_schedule", ([dict(init_value=0.0, peak_value=1.0, warmup_steps=3,
                                     decay_steps=20),
                                dict(init_value=0.1, peak_value=0.5, warmup_steps=0,
                                     decay_steps=30, end_value=0.01)],), {}),
}


@pytest.mark.parametrize("case", sorted(SCHEDULES))
def test_schedules_match_optax(case):
    name, args, kwargs = SCHEDULES[case]
    ours = getattr(optim, name)(*args, **kwargs)
    ref = getattr(optax, name)(*args, **kwargs)
    got = torch.stack([ours(torch.tensor(t)) for t in range(80)])
    want = torch.tensor([float(ref(t)) for t in range(80)])
    assert got.dtype == torch.float64
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-14)


def test_global_norm_matches_optax():
    params, _, _ = _data()
    assert optim.global_norm(params).item() == pytest.approx(
        float(optax.tree.norm(_to_np(params))), rel=1e-14)
