"""step_lr / multistep_lr: per-epoch schedules equal torch's StepLR / MultiStepLR per epoch."""

from __future__ import annotations

import pytest
import torch

import functrain as ft
from functrain.optim import multistep_lr, step_lr


def _torch_lrs(make_scheduler, epochs, steps_per_epoch, lr=0.5):
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=lr)
    scheduler = make_scheduler(opt)
    out = []
    for _ in range(epochs):
        out += [opt.param_groups[0]["lr"]] * steps_per_epoch
        opt.step()
        scheduler.step()
    return out


@pytest.mark.parametrize("step_size, gamma", [(1, 0.5), (3, 0.1), (2, 0.9)])
def test_step_lr_equals_torch_step_lr_stepped_per_epoch(step_size, gamma):
    want = _torch_lrs(lambda o: torch.optim.lr_scheduler.StepLR(o, step_size, gamma), 8, 5)
    sched = step_lr(0.5, steps_per_epoch=5, step_size=step_size, gamma=gamma)
    got = [sched(torch.tensor(t)).item() for t in range(len(want))]
    assert got == pytest.approx(want, rel=1e-6)


def test_multistep_lr_equals_torch_including_a_repeated_milestone():
    milestones = [2, 5, 5]
    want = _torch_lrs(lambda o: torch.optim.lr_scheduler.MultiStepLR(o, milestones, 0.3), 8, 3)
    sched = multistep_lr(0.5, steps_per_epoch=3, milestones=milestones, gamma=0.3)
    got = [sched(torch.tensor(t)).item() for t in range(len(want))]
    assert got == pytest.approx(want, rel=1e-6)


def test_training_with_step_lr_follows_torch_sgd_with_step_lr_in_float64():
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 1).double()
    xs = [torch.randn(4, 3, dtype=torch.float64) for _ in range(4)]
    ref = torch.nn.Linear(3, 1).double()
    ref.load_state_dict(model.state_dict())
    opt = torch.optim.SGD(ref.parameters(), lr=0.2, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
    for _ in range(5):
        for x in xs:
            opt.zero_grad()
            (ref(x) ** 2).mean().backward()
            opt.step()
        scheduler.step()

    def step(state, x):
        def loss_fn(params):
            return (ft.call(model, params, state.buffers, x)[0] ** 2).mean()

        grads, loss = torch.func.grad_and_value(loss_fn)(state.params)
        return state.apply_gradients(grads), {"loss": loss}

    sched = step_lr(0.2, steps_per_epoch=len(xs), step_size=2, gamma=0.5)
    state = ft.TrainState.create(model, ft.optim.sgd(sched, momentum=0.9))
    state = ft.fit(step, state, xs, epochs=5, compile="eager", callbacks=[ft.Logging.quiet()])
    for name, p in ref.named_parameters():
        # schedules compute the learning rate in float32 (0.2 is not exact there)
        torch.testing.assert_close(state.params[name], p.detach(), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("call, error, match", [
    (lambda: step_lr(0.1, 0, 2), ValueError, r"steps_per_epoch: expected an int >= 1, got 0. "
                                             r"HINT: pass len\(loader\)"),
    (lambda: step_lr(0.1, 10, 2, gamma=-1.0), ValueError, r"gamma: expected a number in \[0"),
    (lambda: step_lr(0.1, 10.0, 2), TypeError, r"steps_per_epoch: expected an int"),
    (lambda: multistep_lr(0.1, 10, 3), TypeError, r"milestones: expected a list of epoch"),
    (lambda: multistep_lr(0.1, 10, [2, 0]), ValueError, r"milestones\[1\]: expected an int >= 1"),
])
def test_bad_arguments_are_named(call, error, match):
    with pytest.raises(error, match=match):
        call()
