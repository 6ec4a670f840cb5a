"""K steps per call: the same numbers as K single steps, one compile."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import functrain as ft
from functrain._multistep import group_batches, stack_batches, unrolled_step


def _setup(seed=0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Dropout(0.2), nn.Linear(16, 3))

    def step(state, batch):
        x, y = batch
        key = ft.random.fold_in(state.rng, state.step)

        def loss_fn(params):
            logits, _ = ft.call(model, params, state.buffers, x, rng=key, train=True)
            return nn.functional.cross_entropy(logits, y), logits

        grads, (loss, logits) = torch.func.grad_and_value(loss_fn, has_aux=True)(state.params)
        return state.apply_gradients(grads), {
            "loss": loss, "accuracy": ft.metrics.Accuracy.from_logits(logits, y)}

    g = torch.Generator().manual_seed(seed)
    batches = [(torch.randn(8, 6, generator=g), torch.randint(3, (8,), generator=g))
               for _ in range(8)]
    return model, step, batches


@pytest.mark.parametrize("backend", ["eager", "inductor"])
def test_k_steps_per_call_equal_k_single_steps(backend):
    model, step, batches = _setup()
    single = ft.compile_step(step, compile=backend)
    s1 = ft.TrainState.create(model, ft.optim.adamw(1e-2), seed=3)
    for b in batches:
        s1, _ = single(s1, b)
    multi = ft.compile_step(unrolled_step(step, 4), compile=backend)
    s4 = ft.TrainState.create(model, ft.optim.adamw(1e-2), seed=3)
    for i in range(0, len(batches), 4):
        s4, _ = multi(s4, stack_batches(batches[i:i + 4]))
    assert int(s4.step) == int(s1.step) == 8
    for k in s1.params:
        assert torch.equal(s1.params[k], s4.params[k]), k
    for a, b in zip(ft.tree.leaves(s1.opt_state), ft.tree.leaves(s4.opt_state)):
        assert torch.equal(a, b)
    assert single.read_metrics() == multi.read_metrics()  # the same window, merged per step
    if backend != "eager":
        assert multi.compiles == 1 and single.compiles == 1


def test_group_batches_keeps_order_and_shapes():
    xs = [torch.full((2,), float(i)) for i in range(5)] + [torch.zeros(1)]
    groups = list(group_batches(xs, 2))
    assert [n for n, _ in groups] == [2, 2, 1, 1]
    flat = [b for n, g in groups for b in (g.unbind(0) if n > 1 else [g])]
    assert all(torch.equal(a, b) for a, b in zip(flat, xs, strict=True))
    assert [n for n, _ in group_batches(xs, 2, limit=3)] == [2, 1]
