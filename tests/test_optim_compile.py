"""Compile stability: an optimizer step is traced once, with no graph break, however the step
count, the scheduled learning rate, injected hyperparameters, micro-step phase or finiteness of
the gradients change. Uses a counting backend (no inductor), so it is quick."""

from __future__ import annotations

import pytest
import torch

from functrain import optim, tree


@pytest.fixture
def counting_backend():
    torch._dynamo.reset()
    calls = []

    def backend(gm, example_inputs):
        calls.append(gm)
        return gm.forward

    yield backend, calls
    torch._dynamo.reset()


def _params():
    g = torch.Generator().manual_seed(0)
    return {"fc": {"weight": torch.randn(4, 3, generator=g), "bias": torch.randn(3, generator=g)},
            "temperature": torch.randn((), generator=g)}


def _grads(step):
    g = torch.Generator().manual_seed(100 + step)
    return tree.map(lambda p: torch.randn(p.shape, generator=g), _params())


def _make_step(opt):
    def step(params, state, grads):
        updates, state = opt.update(grads, state, params)
        return optim.apply_updates(params, updates), state
    return step


def _run_both(opt, backend, steps, grads_at=_grads, edit_state=None):
    """Run eager and compiled side by side; return the number of compiles."""
    step = _make_step(opt)
    compiled = torch.compile(step, backend=backend, fullgraph=True)
    params = c_params = _params()
    state = c_state = opt.init(params)
    for i in range(steps):
        if edit_state is not None:
            state, c_state = edit_state(i, state), edit_state(i, c_state)
        params, state = step(params, state, grads_at(i))
        c_params, c_state = compiled(c_params, c_state, grads_at(i))
        for a, b in zip(tree.leaves((params, state)), tree.leaves((c_params, c_state)),
                        strict=True):
            torch.testing.assert_close(a, b, equal_nan=True)
    return params, state


def test_adamw_step_compiles_once(counting_backend):
    backend, calls = counting_backend
    _, state = _run_both(optim.adamw(1e-2, weight_decay=0.1), backend, steps=5)
    assert state[0].count.item() == 5
    assert len(calls) == 1


def test_scheduled_injected_accumulated_guarded_step_compiles_once(counting_backend):
    backend, calls = counting_backend
    schedule = optim.warmup_cosine_decay_schedule(0.0, 1e-2, warmup_steps=2, decay_steps=10)
    inner = optim.chain(
        optim.clip_by_global_norm(1.0),
        optim.inject_hyperparams(optim.adamw)(
            learning_rate=schedule, weight_decay=0.1,
            mask={"fc": {"weight": True, "bias": False}, "temperature": False}))
    opt = optim.MultiSteps(optim.apply_if_finite(inner, max_consecutive_errors=3), 2)

    def grads_at(i):
        grads = _grads(i)
        if i == 3:
            grads["fc"]["bias"][0] = float("inf")
        return grads

    def edit_state(i, state):  # the user changes an injected hyperparameter between steps
        guarded = state.inner_opt_state  # ApplyIfFiniteState
        clip_state, injected = guarded.inner_state  # the chain's states
        wd = torch.tensor(0.1 * (i + 1))
        injected = injected._replace(hyperparams={**injected.hyperparams, "weight_decay": wd})
        return state._replace(inner_opt_state=guarded._replace(
            inner_state=(clip_state, injected)))

    _, state = _run_both(opt, backend, steps=6, grads_at=grads_at, edit_state=edit_state)
    assert state.gradient_step.item() == 3
    assert state.inner_opt_state.total_notfinite.item() == 1
    injected = state.inner_opt_state.inner_state[1]
    assert injected.count.item() == 2  # the step with inf was skipped
    assert len(calls) == 1


def test_schedules_compile_once(counting_backend):
    backend, calls = counting_backend
    schedules = [
        optim.constant_schedule(0.1),
        optim.linear_schedule(1.0, 0.1, 5, transition_begin=1),
        optim.cosine_decay_schedule(1.0, 5, alpha=0.1, exponent=2.0),
        optim.warmup_cosine_decay_schedule(0.0, 1.0, 2, 6, end_value=0.1),
        optim.exponential_decay(1.0, 2, 0.5, transition_begin=1, staircase=True, end_value=0.2),
        optim.piecewise_constant_schedule(1.0, {2: 0.5, 4: 0.1}),
    ]
    fn = torch.compile(lambda count: [s(count) for s in schedules], backend=backend,
                       fullgraph=True)
    for t in range(8):
        count = torch.tensor(t)
        for ours, eager in zip(fn(count), [s(count) for s in schedules], strict=True):
            torch.testing.assert_close(ours, eager)
    assert len(calls) == 1


NEW_OPTIMIZERS = {
    "muon": lambda: optim.muon(0.02),  # 2-D weight: Muon (bf16 Newton-Schulz); others: AdamW
    "adafactor": lambda: optim.adafactor(1e-2, min_dim_size_to_factor=2),
    "schedule_free_adamw": lambda: optim.schedule_free_adamw(1e-2, warmup_steps=2),
    "adamw_ema": lambda: optim.chain(optim.adamw(1e-2), optim.ema_params(0.9)),
    "radam": lambda: optim.radam(1e-2),
    "nadamw_torch": lambda: optim.nadamw(1e-2, momentum_decay=4e-3),
    "prodigy": lambda: optim.prodigy(),
    "adan_wd_schedule": lambda: optim.adan(1e-2, weight_decay=optim.linear_schedule(0.1, 0, 3)),
    "multisteps_skip": lambda: optim.MultiSteps(optim.adam(1e-2), 2,
                                                should_skip_update_fn=optim.skip_not_finite),
}


@pytest.mark.parametrize("name", sorted(NEW_OPTIMIZERS))
def test_new_optimizers_compile_once(counting_backend, name):
    backend, calls = counting_backend

    def grads_at(i):
        grads = _grads(i)
        if i == 2 and name == "multisteps_skip":
            grads["fc"]["bias"][0] = float("nan")  # skipped, inside the same graph
        return grads

    _run_both(NEW_OPTIMIZERS[name](), backend, steps=5, grads_at=grads_at)
    assert len(calls) == 1


def test_a_value_passed_at_update_compiles_once(counting_backend):
    backend, calls = counting_backend
    opt = optim.chain(optim.sgd(0.1, momentum=0.9), optim.reduce_on_plateau(patience=1),
                      optim.scale_by_polyak(max_learning_rate=2.0))

    def step(params, state, grads, value):
        updates, state = opt.update(grads, state, params, value=value)
        return optim.apply_updates(params, updates), state

    compiled = torch.compile(step, backend=backend, fullgraph=True)
    params = c_params = _params()
    state = c_state = opt.init(params)
    for i in range(5):
        value = torch.tensor(1.0 + 0.1 * (i % 2))
        params, state = step(params, state, _grads(i), value)
        c_params, c_state = compiled(c_params, c_state, _grads(i), value)
        for a, b in zip(tree.leaves((params, state)), tree.leaves((c_params, c_state)),
                        strict=True):
            torch.testing.assert_close(a, b)
    assert state[1].scale.item() < 1.0  # the plateau was detected
    assert len(calls) == 1
