"""Numerical parity of `functrain.optim` with `torch.optim`, in float64, over whole trajectories.

Each case trains the same problem twice from the same initial parameters: once with our pure
optimizer (``torch.func.grad`` + ``functional_call``, ``opt.update``, ``apply_updates``) and once
with an ``nn.Module`` and ``torch.optim`` (plus ``lr_scheduler``). The parameters after every one
of the 200 steps must agree to 1e-10 relative. Where optax and torch differ by design, the
arguments are mapped so that the math is the same (noted per case).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch
from torch import nn

from functrain import optim

STEPS = 200
RTOL = 1e-10
ATOL = 1e-12


@pytest.fixture(autouse=True)
def _float64():
    # Our schedules compute in the default dtype (like JAX's x64 flag); params are float64.
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


class Rosenbrock(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.xy = nn.Parameter(torch.tensor([-1.5, 2.0], dtype=torch.float64))

    def forward(self) -> torch.Tensor:
        x, y = self.xy
        return (1 - x) ** 2 + 100 * (y - x**2) ** 2


class MLP(nn.Module):
    """A 2-layer MLP with its fixed random regression data; ``forward()`` is the loss."""

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.fc1 = nn.Linear(4, 16, dtype=torch.float64)
        self.fc2 = nn.Linear(16, 3, dtype=torch.float64)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64) * 0.5)
        self.register_buffer("x", torch.randn(32, 4, generator=g, dtype=torch.float64))
        self.register_buffer("y", torch.randn(32, 3, generator=g, dtype=torch.float64))

    def forward(self) -> torch.Tensor:
        return ((self.fc2(torch.tanh(self.fc1(self.x))) - self.y) ** 2).mean()


PROBLEMS = {"rosenbrock": Rosenbrock, "mlp": MLP}


def _snapshot(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.named_parameters()}


def run_ours(problem: type[nn.Module], opt: optim.GradientTransformation,
             steps: int = STEPS) -> list[dict[str, torch.Tensor]]:
    module = problem()
    params = _snapshot(module)
    grad_fn = torch.func.grad(lambda p: torch.func.functional_call(module, p, ()))
    state = opt.init(params)
    trajectory = []
    for _ in range(steps):
        updates, state = opt.update(grad_fn(params), state, params)
        params = optim.apply_updates(params, updates)
        trajectory.append(params)
    return trajectory


def run_torch(problem: type[nn.Module], make_opt: Callable[[nn.Module], torch.optim.Optimizer],
              make_sched: Callable | None = None, steps: int = STEPS):
    module = problem()
    opt = make_opt(module)
    sched = make_sched(opt) if make_sched else None
    trajectory, lrs = [], []
    for _ in range(steps):
        lrs.append(opt.param_groups[0]["lr"])
        opt.zero_grad()
        module().backward()
        opt.step()
        if sched is not None:
            sched.step()
        trajectory.append(_snapshot(module))
    return trajectory, lrs


def assert_trajectories_close(ours, ref) -> None:
    """Params at every step agree to RTOL; a mismatch reports its (step, *index)."""
    assert len(ours) == len(ref) == STEPS
    assert ours[0].keys() == ref[0].keys()
    for k in ref[0]:
        a = torch.stack([p[k] for p in ours])
        b = torch.stack([p[k] for p in ref])
        assert a.dtype == torch.float64
        torch.testing.assert_close(a, b, rtol=RTOL, atol=ATOL,
                                   msg=lambda m, k=k: f"{k} (index = (step, ...)): {m}")
    # The trajectory must actually move, or the comparison proves nothing.
    first = next(iter(ref[0]))
    assert not torch.equal(ref[0][first], ref[-1][first])


def _decay_groups(module: nn.Module, weight_decay: float) -> list[dict]:
    """A torch param group per decay rule: biases get weight_decay 0."""
    named = list(module.named_parameters())
    return [{"params": [p for n, p in named if not n.endswith("bias")],
             "weight_decay": weight_decay},
            {"params": [p for n, p in named if n.endswith("bias")], "weight_decay": 0.0}]


def _no_bias_mask(params):
    return {k: not k.endswith("bias") for k in params}


# (our optimizer, torch optimizer factory); learning rates keep Rosenbrock stable.
CASES = {
    "sgd": (optim.sgd(1e-4), lambda m: torch.optim.SGD(m.parameters(), lr=1e-4)),
    "sgd_momentum": (optim.sgd(1e-4, momentum=0.9),
                     lambda m: torch.optim.SGD(m.parameters(), lr=1e-4, momentum=0.9)),
    "sgd_nesterov": (optim.sgd(1e-4, momentum=0.9, nesterov=True),
                     lambda m: torch.optim.SGD(m.parameters(), lr=1e-4, momentum=0.9,
                                               nesterov=True)),
    # torch's SGD weight_decay adds wd * p to the gradient: add_decayed_weights before sgd.
    "sgd_weight_decay": (optim.chain(optim.add_decayed_weights(0.05),
                                     optim.sgd(1e-4, momentum=0.9)),
                         lambda m: torch.optim.SGD(m.parameters(), lr=1e-4, momentum=0.9,
                                                   weight_decay=0.05)),
    "adam": (optim.adam(1e-2, b1=0.8, b2=0.99, eps=1e-6),
             lambda m: torch.optim.Adam(m.parameters(), lr=1e-2, betas=(0.8, 0.99), eps=1e-6)),
    # optax's adamw default weight_decay is 1e-4 (torch: 1e-2): pass it explicitly. The mask
    # is torch's param group with weight_decay=0 for biases.
    "adamw_masked": (optim.adamw(1e-2, weight_decay=0.1, mask=_no_bias_mask),
                     lambda m: torch.optim.AdamW(_decay_groups(m, 0.1), lr=1e-2)),
    # optax's rmsprop: decay=0.9 and eps inside the sqrt by default; torch: alpha=0.99, outside.
    "rmsprop": (optim.rmsprop(1e-3, decay=0.99, eps=1e-8, eps_in_sqrt=False),
                lambda m: torch.optim.RMSprop(m.parameters(), lr=1e-3, alpha=0.99, eps=1e-8)),
    "rmsprop_centered_momentum": (
        optim.rmsprop(1e-3, decay=0.99, eps=1e-6, eps_in_sqrt=False, centered=True,
                      momentum=0.5),
        lambda m: torch.optim.RMSprop(m.parameters(), lr=1e-3, alpha=0.99, eps=1e-6,
                                      centered=True, momentum=0.5)),
    # optax: g / sqrt(s + eps), init 0.1; torch: g / (sqrt(s) + eps), init 0: use 0 and 0.
    "adagrad": (optim.adagrad(1e-2, initial_accumulator_value=0.0, eps=0.0),
                lambda m: torch.optim.Adagrad(m.parameters(), lr=1e-2,
                                              initial_accumulator_value=0.0, eps=0.0)),
}


@pytest.mark.parametrize("problem", sorted(PROBLEMS))
@pytest.mark.parametrize("case", sorted(CASES))
def test_matches_torch_optim(case, problem):
    ours, make_torch = CASES[case]
    reference, _ = run_torch(PROBLEMS[problem], make_torch)
    assert_trajectories_close(run_ours(PROBLEMS[problem], ours), reference)


def _warmup_cosine_reference(opt, init, peak, warmup, total, end):
    """torch's LambdaLR (linear warm-up) then CosineAnnealingLR, joined by SequentialLR."""
    sched = torch.optim.lr_scheduler
    warm = sched.LambdaLR(opt, lambda t: (init + (peak - init) * t / warmup) / peak)
    cosine = sched.CosineAnnealingLR(opt, T_max=total - warmup, eta_min=end)
    return sched.SequentialLR(opt, [warm, cosine], milestones=[warmup])


@pytest.mark.parametrize("problem", sorted(PROBLEMS))
def test_warmup_cosine_schedule_matches_torch_schedulers(problem):
    init, peak, warmup, total, end = 1e-5, 1e-3, 20, STEPS, 1e-4
    schedule = optim.warmup_cosine_decay_schedule(init, peak, warmup, total, end)
    ours = run_ours(PROBLEMS[problem], optim.sgd(schedule, momentum=0.9))
    reference, torch_lrs = run_torch(
        PROBLEMS[problem], lambda m: torch.optim.SGD(m.parameters(), lr=peak, momentum=0.9),
        lambda opt: _warmup_cosine_reference(opt, init, peak, warmup, total, end))
    # The schedule value at every step, against torch's and against the closed form.
    for t, torch_lr in enumerate(torch_lrs):
        value = schedule(torch.tensor(t))
        assert value.dtype == torch.float64
        closed = (init + (peak - init) * t / warmup if t < warmup else
                  end + (peak - end) * 0.5 * (1 + math.cos(math.pi * (t - warmup)
                                                           / (total - warmup))))
        assert value.item() == pytest.approx(torch_lr, rel=RTOL, abs=peak * 1e-12), t
        assert value.item() == pytest.approx(closed, rel=1e-12, abs=peak * 1e-14), t
    assert_trajectories_close(ours, reference)
