"""`functrain.optim`: public API, purity, dtypes, and the transformations without a torch twin."""

from __future__ import annotations

import inspect

import pytest
import torch

import functrain.optim as optim
from functrain import tree


def _params():
    g = torch.Generator().manual_seed(0)
    layer = {"weight": torch.randn(4, 3, generator=g), "bias": torch.randn(3, generator=g)}
    return {"layer": layer, "scale": torch.randn((), generator=g)}


def _grads(seed=1):
    g = torch.Generator().manual_seed(seed)
    return tree.map(lambda p: torch.randn(p.shape, generator=g), _params())


def _clone(t):
    return tree.map(lambda x: x.clone() if isinstance(x, torch.Tensor) else x, t)


def _assert_tree_equal(a, b):
    tree.assert_same_structure(a, b)
    for x, y in zip(tree.leaves(a), tree.leaves(b), strict=True):
        assert torch.equal(x, y)


def _assert_tree_close(a, b, **kw):
    tree.assert_same_structure(a, b)
    for x, y in zip(tree.leaves(a), tree.leaves(b), strict=True):
        torch.testing.assert_close(x, y, **kw)


# ---------------------------------------------------------------------------------------------
# Public API.


def test_every_public_name_is_exported_and_documented_with_an_example():
    assert len(optim.__all__) == len(set(optim.__all__))
    for name in optim.__all__:
        obj = getattr(optim, name)
        doc = inspect.getdoc(obj)
        assert doc, name
        assert "Example:" in doc and ">>>" in doc, name
    public = {n for n in dir(optim) if not n.startswith("_")}
    assert public - set(optim.__all__) == set()


ALL_OPTIMIZERS = {
    "sgd": lambda: optim.sgd(0.1, momentum=0.9, nesterov=True),
    "adam": lambda: optim.adam(0.1),
    "adam_nesterov": lambda: optim.adam(0.1, nesterov=True),
    "adamw": lambda: optim.adamw(0.1, weight_decay=0.1),
    "rmsprop": lambda: optim.rmsprop(0.1, centered=True, momentum=0.9),
    "adagrad": lambda: optim.adagrad(0.1),
    "lion": lambda: optim.lion(0.1),
    "clip": lambda: optim.chain(optim.clip(0.5), optim.clip_by_global_norm(1.0), optim.sgd(0.1)),
    "masked": lambda: optim.masked(optim.adam(0.1), {"layer": True, "scale": False}),
    "multi": lambda: optim.multi_transform(
        {"a": optim.adam(0.1), "b": optim.sgd(0.1)},
        {"layer": {"weight": "a", "bias": "b"}, "scale": "b"}),
    "inject": lambda: optim.inject_hyperparams(optim.adamw)(
        learning_rate=optim.linear_schedule(0.1, 0.0, 10), weight_decay=0.1),
    "multisteps": lambda: optim.MultiSteps(optim.adam(0.1), 2),
    "if_finite": lambda: optim.apply_if_finite(optim.adam(0.1), 2),
}


@pytest.mark.parametrize("name", sorted(ALL_OPTIMIZERS))
def test_pure_no_input_is_mutated_and_dtypes_are_kept(name):
    opt = ALL_OPTIMIZERS[name]()
    params, grads = _params(), _grads()
    state = opt.init(params)
    for _ in range(2):  # the second step sees a non-trivial state
        before = _clone((params, grads, state))
        updates, new_state = opt.update(grads, state, params)
        _assert_tree_equal(before, (params, grads, state))
        tree.assert_trees_match(params, updates, "updates")
        tree.assert_same_structure(state, new_state)
        new_params = optim.apply_updates(params, updates)
        _assert_tree_equal(before[0], params)
        tree.assert_trees_match(params, new_params, "new_params")
        state = new_state


def test_counters_are_int64_on_the_params_device():
    state = optim.adamw(0.1).init(_params())
    assert state[0].count.dtype == torch.int64 and state[0].count.shape == ()
    _, state = optim.adamw(0.1).update(_grads(), state, _params())
    assert state[0].count.item() == 1 and state[0].count.dtype == torch.int64


def test_apply_updates_keeps_param_dtype():
    params = {"w": torch.ones(3, dtype=torch.bfloat16), "v": torch.ones(2, dtype=torch.float64)}
    updates = {"w": torch.full((3,), 1e-3), "v": torch.full((2,), 1e-3)}  # float32 updates
    new = optim.apply_updates(params, updates)
    assert new["w"].dtype == torch.bfloat16 and new["v"].dtype == torch.float64
    torch.testing.assert_close(new["v"], torch.full((2,), 1.001, dtype=torch.float64))


def test_low_precision_params_with_float32_moments():
    params = {"w": torch.ones(3, dtype=torch.bfloat16)}
    opt = optim.adamw(0.1, mu_dtype=torch.float32)
    state = opt.init(params)
    assert state[0].mu["w"].dtype == torch.float32 and state[0].nu["w"].dtype == torch.bfloat16
    updates, state = opt.update({"w": torch.ones(3, dtype=torch.bfloat16)}, state, params)
    assert updates["w"].dtype == torch.bfloat16 and state[0].mu["w"].dtype == torch.float32


def test_chain_composes_in_order():
    opt = optim.chain(optim.scale(2.0), optim.clip(1.0))
    updates, state = opt.update({"w": torch.tensor([0.4, 0.6])}, opt.init(None))
    torch.testing.assert_close(updates["w"], torch.tensor([0.8, 1.0]))
    assert state == (optim.EmptyState(), optim.EmptyState())


# ---------------------------------------------------------------------------------------------
# Transformations without a torch.optim counterpart.


def test_lion_matches_a_hand_written_reference():
    b1, b2, lr, wd = 0.9, 0.99, 1e-2, 0.1
    params = _params()
    opt = optim.lion(lr, b1=b1, b2=b2, weight_decay=wd)
    state = opt.init(params)
    ref_p = _clone(params)
    ref_m = tree.map(torch.zeros_like, params)
    for step in range(5):
        grads = _grads(seed=step)
        updates, state = opt.update(grads, state, params)
        params = optim.apply_updates(params, updates)
        # Chen et al. (2023), Algorithm 2, written out by hand.
        for path in ("layer.weight", "layer.bias", "scale"):
            *head, last = path.split(".")
            p, m, g = ref_p, ref_m, grads
            for k in head:
                p, m, g = p[k], m[k], g[k]
            c = b1 * m[last] + (1 - b1) * g[last]
            p[last] = p[last] - lr * (torch.sign(c) + wd * p[last])
            m[last] = b2 * m[last] + (1 - b2) * g[last]
        _assert_tree_close(params, ref_p, rtol=1e-6, atol=1e-7)
        _assert_tree_close(state[0].mu, ref_m, rtol=1e-6, atol=1e-7)
    assert state[0].count.item() == 5


def test_adam_nesterov_matches_the_optax_formula():
    b1, b2, eps, lr = 0.9, 0.999, 1e-8, 0.1
    opt = optim.adam(lr, b1, b2, eps, nesterov=True)
    p = {"w": torch.tensor([0.5, -1.0], dtype=torch.float64)}
    state = opt.init(p)
    m = v = torch.zeros(2, dtype=torch.float64)
    for t in range(1, 4):
        g = torch.tensor([0.3 * t, -0.2], dtype=torch.float64)
        updates, state = opt.update({"w": g}, state, p)
        m, v = b1 * m + (1 - b1) * g, b2 * v + (1 - b2) * g * g
        m_hat = b1 * m / (1 - b1 ** (t + 1)) + (1 - b1) * g / (1 - b1**t)
        expected = -lr * m_hat / (torch.sqrt(v / (1 - b2**t)) + eps)
        torch.testing.assert_close(updates["w"], expected, rtol=1e-12, atol=0)


def test_clip_by_global_norm():
    grads = _grads()
    norm = torch.sqrt(sum((g**2).sum() for g in tree.leaves(grads)))
    opt = optim.clip_by_global_norm(norm.item() * 2)  # below the threshold: unchanged
    _assert_tree_equal(opt.update(grads, opt.init(None))[0], grads)
    opt = optim.clip_by_global_norm(0.5)
    clipped, _ = opt.update(grads, opt.init(None))
    _assert_tree_close(clipped, tree.map(lambda g: g * (0.5 / norm), grads))
    torch.testing.assert_close(tree.global_norm(clipped), torch.tensor(0.5))
    # torch's clip_grad_norm_ divides by norm + 1e-6 (documented difference): close, not equal.
    ts = [torch.nn.Parameter(torch.zeros_like(g)) for g in tree.leaves(grads)]
    for t, g in zip(ts, tree.leaves(grads), strict=True):
        t.grad = g.clone()
    torch.nn.utils.clip_grad_norm_(ts, 0.5)
    for ours, t in zip(tree.leaves(clipped), ts, strict=True):
        torch.testing.assert_close(ours, t.grad, rtol=1e-5, atol=1e-6)


def test_clip():
    grads = _grads()
    clipped, _ = optim.clip(0.3).update(grads, optim.EmptyState())
    _assert_tree_equal(clipped, tree.map(lambda g: g.clamp(-0.3, 0.3), grads))


def test_masked_applies_inner_only_where_true_and_keeps_no_state_elsewhere():
    params, grads = _params(), _grads()
    mask = {"layer": {"weight": True, "bias": False}, "scale": False}
    opt = optim.masked(optim.adam(0.1), mask)
    state = opt.init(params)
    adam_state = state.inner_state[0]
    assert adam_state.mu["layer"]["bias"] == optim.MaskedNode()
    assert len(tree.leaves(adam_state.mu)) == 1
    updates, _ = opt.update(grads, state, params)
    ref, _ = optim.adam(0.1).update(grads, optim.adam(0.1).init(params), params)
    torch.testing.assert_close(updates["layer"]["weight"], ref["layer"]["weight"])
    assert updates["layer"]["bias"] is grads["layer"]["bias"]
    assert updates["scale"] is grads["scale"]


def test_masked_with_a_prefix_mask_and_a_mask_function():
    params, grads = _params(), _grads()
    prefix = optim.masked(optim.scale(0.0), {"layer": True, "scale": False})
    updates, _ = prefix.update(grads, prefix.init(params))
    assert torch.count_nonzero(updates["layer"]["weight"]) == 0
    assert torch.equal(updates["scale"], grads["scale"])
    fn = optim.masked(optim.scale(0.0), lambda t: tree.map(lambda x: x.ndim == 2, t))
    updates, _ = fn.update(grads, fn.init(params))
    assert torch.count_nonzero(updates["layer"]["weight"]) == 0
    assert torch.equal(updates["layer"]["bias"], grads["layer"]["bias"])


def test_multi_transform_applies_each_group_its_transformation():
    params, grads = _params(), _grads()
    labels = {"layer": {"weight": "adam", "bias": "sgd"}, "scale": "frozen"}
    opt = optim.multi_transform(
        {"adam": optim.adam(0.1), "sgd": optim.sgd(0.5), "frozen": optim.set_to_zero()}, labels)
    state = opt.init(params)
    updates, state = opt.update(grads, state, params)
    adam_ref, _ = optim.adam(0.1).update(grads, optim.adam(0.1).init(params))
    torch.testing.assert_close(updates["layer"]["weight"], adam_ref["layer"]["weight"])
    torch.testing.assert_close(updates["layer"]["bias"], -0.5 * grads["layer"]["bias"])
    assert torch.equal(updates["scale"], torch.zeros(()))
    assert len(tree.leaves(state.inner_states["adam"].inner_state[0].mu)) == 1


@pytest.mark.parametrize("use_grad_mean", [True, False])
def test_multisteps_k_micro_steps_equal_one_step_on_the_mean_gradient(use_grad_mean):
    k = 3
    params = _params()
    opt = optim.MultiSteps(optim.adam(0.1), every_k_schedule=k, use_grad_mean=use_grad_mean)
    state = opt.init(params)
    ref_opt, ref_params = optim.adam(0.1), params
    ref_state = ref_opt.init(params)
    for big_step in range(2):
        micro = [_grads(seed=10 * big_step + i) for i in range(k)]
        for i, g in enumerate(micro):
            updates, state = opt.update(g, state, params)
            params = optim.apply_updates(params, updates)
            assert bool(opt.has_updated(state)) == (i == k - 1)
            if i < k - 1:
                assert all(torch.count_nonzero(u) == 0 for u in tree.leaves(updates))
        total = tree.map(lambda *gs: sum(gs), *micro)
        target = tree.map(lambda s: s / k, total) if use_grad_mean else total
        ref_updates, ref_state = ref_opt.update(target, ref_state, ref_params)
        ref_params = optim.apply_updates(ref_params, ref_updates)
        _assert_tree_close(params, ref_params, rtol=1e-5, atol=1e-6)
        assert state.gradient_step.item() == big_step + 1 and state.mini_step.item() == 0
        assert state.inner_opt_state[0].count.item() == big_step + 1


def test_multisteps_with_a_schedule_for_k():
    opt = optim.MultiSteps(optim.sgd(1.0), every_k_schedule=lambda step: 1 + step)
    params = {"w": torch.zeros(1)}
    state = opt.init(params)
    applied = []
    for _ in range(6):
        _, state = opt.update({"w": torch.ones(1)}, state, params)
        applied.append(bool(opt.has_updated(state)))
    assert applied == [True, False, True, False, False, True]  # k = 1, 2, 3


def test_apply_if_finite_skips_bad_steps_and_counts_them():
    params, grads = _params(), _grads()
    opt = optim.apply_if_finite(optim.adam(0.1), max_consecutive_errors=2)
    state = opt.init(params)
    updates, state = opt.update(grads, state, params)  # a good step
    good_inner = _clone(state.inner_state)
    for i, bad in enumerate([float("inf"), float("nan")]):
        bad_grads = _clone(grads)
        bad_grads["layer"]["bias"][1] = bad
        updates, state = opt.update(bad_grads, state, params)
        assert all(torch.count_nonzero(u) == 0 for u in tree.leaves(updates))
        _assert_tree_equal(optim.apply_updates(params, updates), params)
        _assert_tree_equal(state.inner_state, good_inner)
        assert not state.last_finite and state.notfinite_count.item() == i + 1
    assert state.total_notfinite.item() == 2
    # A third bad step in a row exceeds max_consecutive_errors: it is applied.
    bad_grads = _clone(grads)
    bad_grads["scale"] = torch.tensor(float("nan"))
    updates, state = opt.update(bad_grads, state, params)
    assert torch.isnan(updates["scale"]) and state.inner_state[0].count.item() == 2
    # A finite step resets the consecutive count.
    _, state = opt.update(grads, state, params)
    assert state.last_finite and state.notfinite_count.item() == 0
    assert state.total_notfinite.item() == 3


def test_inject_hyperparams_stores_tensors_and_changing_them_changes_the_update():
    params, grads = _params(), _grads()
    opt = optim.inject_hyperparams(optim.adamw)(learning_rate=0.1, weight_decay=0.01)
    state = opt.init(params)
    hp = state.hyperparams
    assert set(hp) == {"learning_rate", "b1", "b2", "eps", "eps_root", "weight_decay"}
    assert all(v.shape == () and v.dtype == torch.float32 for v in hp.values())
    u1, _ = opt.update(grads, state, params)
    ref, _ = optim.adamw(0.1, weight_decay=0.01).update(
        grads, optim.adamw(0.1, weight_decay=0.01).init(params), params)
    _assert_tree_close(u1, ref)
    state2 = state._replace(hyperparams={**hp, "learning_rate": torch.tensor(0.2)})
    u2, new_state = opt.update(grads, state2, params)
    _assert_tree_close(u2, tree.map(lambda u: 2 * u, u1))
    assert new_state.hyperparams["learning_rate"].item() == pytest.approx(0.2)
    assert new_state.count.item() == 1


def test_inject_hyperparams_evaluates_schedules_at_the_step_count():
    sched = optim.linear_schedule(1.0, 0.0, transition_steps=4)
    opt = optim.inject_hyperparams(optim.sgd)(learning_rate=sched)
    params = {"w": torch.zeros(1)}
    state = opt.init(params)
    seen = []
    for _ in range(3):
        updates, state = opt.update({"w": torch.ones(1)}, state, params)
        seen.append(round(-updates["w"].item(), 6))
    assert seen == [1.0, 0.75, 0.5]
    assert state.hyperparams["learning_rate"].item() == pytest.approx(0.5)


def test_inject_hyperparams_dtype_and_static_args():
    mask_fn = lambda p: tree.map(lambda x: x.ndim > 1, p)  # noqa: E731
    opt = optim.inject_hyperparams(optim.adamw, static_args="mask",
                                   hyperparam_dtype=torch.float64)(0.1, mask=mask_fn)
    state = opt.init(_params())
    assert "mask" not in state.hyperparams
    assert state.hyperparams["learning_rate"].dtype == torch.float64
    opt.update(_grads(), state, _params())


def test_new_state_keeps_the_state_dict_order_when_grads_are_ordered_differently():
    # A runner writing the new state back leaf by leaf relies on matching dict order.
    params = {"b": torch.zeros(2), "a": torch.ones(3)}
    grads = {"a": torch.ones(3), "b": torch.ones(2)}
    for opt in (optim.adamw(0.1), optim.MultiSteps(optim.sgd(0.1, momentum=0.9), 2),
                optim.apply_if_finite(optim.lion(0.1), 1)):
        state = opt.init(params)
        _, new_state = opt.update(grads, state, params)
        old, new = _dicts(state), _dicts(new_state)
        assert len(old) == len(new) > 0
        for o, n in zip(old, new, strict=True):
            assert list(o) == list(n)


def _dicts(t):
    """Every dict node of ``t``, depth first."""
    if isinstance(t, dict):
        return [t, *[d for v in t.values() for d in _dicts(v)]]
    if isinstance(t, tuple):
        return [d for v in t for d in _dicts(v)]
    return []
