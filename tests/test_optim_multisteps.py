"""MultiSteps as optax defines it (has_updated, accumulator dtype, skip predicates), plus its
documented non-finite behaviour: a bad micro-batch spoils one window, not the run."""

from __future__ import annotations

import functools

import pytest
import torch

from functrain import optim, tree


def _params(dtype=torch.float32):
    return {"w": torch.ones(3, dtype=dtype), "b": torch.zeros(2, dtype=dtype)}


def _grads(value, dtype=torch.float32):
    return {"w": torch.full((3,), value, dtype=dtype), "b": torch.full((2,), value, dtype=dtype)}


def test_has_updated_is_false_for_the_initial_state_as_in_optax():
    opt = optim.MultiSteps(optim.sgd(0.1), 2)
    state = opt.init(_params())
    assert not bool(opt.has_updated(state))
    flags = []
    for _ in range(4):
        _, state = opt.update(_grads(1.0), state, _params())
        flags.append(bool(opt.has_updated(state)))
    assert flags == [False, True, False, True]


@pytest.mark.parametrize("accumulator_dtype, expected", [
    ("default", torch.float32), (None, torch.bfloat16), (torch.float64, torch.float64)])
def test_accumulator_dtype(accumulator_dtype, expected):
    kw = {} if accumulator_dtype == "default" else {"accumulator_dtype": accumulator_dtype}
    opt = optim.MultiSteps(optim.sgd(1.0), 4, **kw)
    params = _params(torch.bfloat16)
    state = opt.init(params)
    assert all(a.dtype == expected for a in tree.leaves(state.acc_grads))
    # 1 + 2**-9 is not a bfloat16: accumulated in float32 the mean keeps it; updates come back
    # in the params' dtype.
    for g in (1.0, 1.0 + 2**-9, 1.0, 1.0 + 2**-9):
        updates, state = opt.update(_grads(g, torch.bfloat16), state, params)
    assert updates["w"].dtype == torch.bfloat16
    if expected != torch.bfloat16:
        ref = torch.tensor(-(1.0 + 2**-10)).to(torch.bfloat16)
        assert torch.equal(updates["w"][0], ref)


def test_a_non_finite_micro_batch_spoils_only_its_window():
    # Documented: the window with the NaN emits a NaN mean (wrap the inner optimizer in
    # apply_if_finite to drop it); the accumulator restarts from zeros, so the next window is
    # clean. (optax multiplies by (1 - emit) and NaN * 0 stays NaN.)
    opt = optim.MultiSteps(optim.apply_if_finite(optim.sgd(1.0), 5), 2)
    params = _params()
    state = opt.init(params)
    seen = []
    for g in (1.0, float("nan"), 2.0, 4.0):
        updates, state = opt.update(_grads(g), state, params)
        seen.append(updates["w"][0].item())
    assert seen == [0.0, 0.0, 0.0, -3.0]  # window 1 skipped by apply_if_finite; window 2 clean
    assert state.inner_opt_state.total_notfinite.item() == 1
    assert all(torch.isfinite(a).all() for a in tree.leaves(state.acc_grads))


def test_optax_keeps_the_nan_where_we_recover():
    jax = pytest.importorskip("jax")
    optax = pytest.importorskip("optax")
    jnp = jax.numpy
    opt = optax.MultiSteps(optax.sgd(1.0), 2)
    params = {"w": jnp.ones(3)}
    state = opt.init(params)
    for g in (1.0, float("nan"), 2.0, 4.0):
        updates, state = opt.update({"w": jnp.full(3, g)}, state, params)
    assert bool(jnp.isnan(updates["w"]).all())  # the documented difference


def test_skip_not_finite_drops_the_micro_batch_as_in_optax():
    opt = optim.MultiSteps(optim.sgd(1.0), 2, should_skip_update_fn=optim.skip_not_finite)
    params = _params()
    state = opt.init(params)
    assert state.skip_state["num_not_finite"].item() == 0
    seen = []
    for g in (1.0, float("inf"), 3.0, 5.0):
        updates, state = opt.update(_grads(g), state, params)
        seen.append((updates["w"][0].item(), state.mini_step.item()))
    assert seen == [(0.0, 1), (0.0, 1), (-2.0, 0), (0.0, 1)]  # the inf did not count
    assert state.skip_state["num_not_finite"].item() == 0


def test_skip_large_updates_threshold():
    skip = functools.partial(optim.skip_large_updates, max_squared_norm=5.0)
    assert bool(skip(_grads(1.0), torch.tensor(0), None)[0])  # 5 * 1 is not < 5
    assert not bool(skip(_grads(0.5), torch.tensor(0), None)[0])
    assert bool(skip(_grads(float("nan")), torch.tensor(0), None)[0])


def test_should_skip_must_return_a_bool_scalar():
    opt = optim.MultiSteps(optim.sgd(1.0), 2,
                           should_skip_update_fn=lambda u, s, p: (torch.tensor(1), ()))
    with pytest.raises(TypeError, match=r"should_skip_update_fn: expected it to return a 0-d "
                                        r"bool tensor first, got a int64 tensor"):
        opt.update(_grads(1.0), opt.init(_params()), _params())


def test_extra_args_reach_the_inner_optimizer():
    opt = optim.MultiSteps(optim.chain(optim.sgd(1.0), optim.reduce_on_plateau(patience=0)), 1)
    params = _params()
    state = opt.init(params)
    _, state = opt.update(_grads(1.0), state, params, value=torch.tensor(1.0))
    _, state = opt.update(_grads(1.0), state, params, value=torch.tensor(1.0))
    assert state.inner_opt_state[1].scale.item() == pytest.approx(0.1)
