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
