"""Float64 trajectory parity with the rest of ``torch.optim``: Adadelta, Adafactor, Adamax,
ASGD (params and its average), NAdam (L2 and decoupled), RAdam (L2 and decoupled), Rprop and
Muon (with AdamW for the non-2-D params, as torch's documentation prescribes); plus the weight
averages of `ema_params`/`swa_params` against ``torch.optim.swa_utils.AveragedModel``.

Same protocol as ``test_optim_parity.py``: 200 steps, every step's params compared at rtol
1e-10. Where torch's arguments differ from optax's, they are mapped (noted per case).

Not covered: ``torch.optim.LBFGS``. Its ``step(closure)`` re-evaluates the loss and gradient
several times per step (line search, ``max_iter`` inner iterations) and branches on their
values on the host; as a pure ``update(grads, state, params)`` it would need the loss function
inside the optimizer. optax's ``lbfgs`` does that with ``value_and_grad_from_state`` and a
zoom line search; it is not ported here.
"""

from __future__ import annotations

import pytest
import torch
from test_optim_parity import (  # noqa: F401  (_float64 is an autouse fixture)
    MLP,
    PROBLEMS,
    STEPS,
    _float64,
    _snapshot,
    assert_trajectories_close,
    run_ours,
    run_torch,
)
from torch import nn

from functrain import optim


def _adafactor_ours(lr: float, wd: float) -> optim.GradientTransformation:
    # torch's relative step min(lr, 1/sqrt(t)), its weight decay lr * wd (not scaled by the
    # relative step), its d=1 update clipping; factor any 2-D leaf.
    return optim.adafactor(
        learning_rate=lambda t: torch.clamp((t + 1.0) ** -0.5, max=lr),
        min_dim_size_to_factor=1, decay_rate=0.8, clipping_threshold=1.0,
        weight_decay_rate=lr * wd, eps=0.0)


CASES = {
    "adadelta": (optim.adadelta(1.0, rho=0.9, eps=1e-6),
                 lambda m: torch.optim.Adadelta(m.parameters(), lr=1.0, rho=0.9, eps=1e-6)),
    "adadelta_weight_decay": (
        optim.adadelta(0.5, rho=0.8, eps=1e-5, weight_decay=0.05),
        lambda m: torch.optim.Adadelta(m.parameters(), lr=0.5, rho=0.8, eps=1e-5,
                                       weight_decay=0.05)),
    # lr 1e-3: at torch's default 1e-2 the MLP's trajectory turns chaotic after ~150 steps
    # (rounding differences then double every step, for any two implementations).
    "adafactor": (_adafactor_ours(1e-3, 0.0),
                  lambda m: torch.optim.Adafactor(m.parameters(), lr=1e-3)),
    "adafactor_weight_decay": (_adafactor_ours(1e-3, 0.5),
                               lambda m: torch.optim.Adafactor(m.parameters(), lr=1e-3,
                                                               weight_decay=0.5)),
    "adamax": (optim.adamax(1e-2, b1=0.8, b2=0.99, eps=1e-6),
               lambda m: torch.optim.Adamax(m.parameters(), lr=1e-2, betas=(0.8, 0.99),
                                            eps=1e-6)),
    # torch's L2 weight decay is added to the gradient: add_decayed_weights before.
    "adamax_weight_decay": (
        optim.chain(optim.add_decayed_weights(0.05), optim.adamax(1e-2)),
        lambda m: torch.optim.Adamax(m.parameters(), lr=1e-2, weight_decay=0.05)),
    "asgd": (optim.asgd(1e-4, lambd=1e-3, alpha=0.75, t0=50, weight_decay=0.01),
             lambda m: torch.optim.ASGD(m.parameters(), lr=1e-4, lambd=1e-3, alpha=0.75, t0=50,
                                        weight_decay=0.01)),
    # NAdam at lr 1e-3: at 1e-2 the MLP's trajectory turns chaotic after ~90 steps.
    "nadam": (optim.nadam(1e-3, b1=0.8, b2=0.99, eps=1e-6, momentum_decay=4e-3),
              lambda m: torch.optim.NAdam(m.parameters(), lr=1e-3, betas=(0.8, 0.99), eps=1e-6)),
    "nadam_l2": (optim.chain(optim.add_decayed_weights(0.05),
                             optim.nadam(1e-2, momentum_decay=6e-3)),
                 lambda m: torch.optim.NAdam(m.parameters(), lr=1e-2, weight_decay=0.05,
                                             momentum_decay=6e-3)),
    "nadamw": (optim.nadamw(1e-3, weight_decay=0.1, momentum_decay=4e-3),
               lambda m: torch.optim.NAdam(m.parameters(), lr=1e-3, weight_decay=0.1,
                                           decoupled_weight_decay=True)),
    # torch adds eps to the uncorrected root; the two agree for eps=0.
    "radam": (optim.radam(1e-2, b1=0.8, b2=0.99, eps=0.0),
              lambda m: torch.optim.RAdam(m.parameters(), lr=1e-2, betas=(0.8, 0.99), eps=0.0)),
    "radam_l2": (optim.chain(optim.add_decayed_weights(0.05), optim.radam(1e-2, eps=0.0)),
                 lambda m: torch.optim.RAdam(m.parameters(), lr=1e-2, eps=0.0,
                                             weight_decay=0.05)),
    "radam_decoupled": (
        optim.chain(optim.scale_by_radam(eps=0.0), optim.add_decayed_weights(0.1),
                    optim.scale_by_learning_rate(1e-2)),
        lambda m: torch.optim.RAdam(m.parameters(), lr=1e-2, eps=0.0, weight_decay=0.1,
                                    decoupled_weight_decay=True)),
    "rprop": (optim.rprop(1e-3),
              lambda m: torch.optim.Rprop(m.parameters(), lr=1e-3)),
    "rprop_etas": (optim.rprop(2e-3, eta_minus=0.3, eta_plus=1.5, min_step_size=1e-5,
                               max_step_size=0.05),
                   lambda m: torch.optim.Rprop(m.parameters(), lr=2e-3, etas=(0.3, 1.5),
                                               step_sizes=(1e-5, 0.05))),
}


@pytest.mark.parametrize("problem", sorted(PROBLEMS))
@pytest.mark.parametrize("case", sorted(CASES))
def test_matches_torch_optim(case, problem):
    ours, make_torch = CASES[case]
    reference, _ = run_torch(PROBLEMS[problem], make_torch)
    assert_trajectories_close(run_ours(PROBLEMS[problem], ours), reference)


def _run_with_state(problem, opt, steps=STEPS):
    """Like run_ours, also returning the optimizer state after every step."""
    module = problem()
    params = _snapshot(module)
    grad_fn = torch.func.grad(lambda p: torch.func.functional_call(module, p, ()))
    state = opt.init(params)
    trajectory, states = [], []
    for _ in range(steps):
        updates, state = opt.update(grad_fn(params), state, params)
        params = optim.apply_updates(params, updates)
        trajectory.append(params)
        states.append(state)
    return trajectory, states


def _stack_close(ours: list[dict], ref: list[dict]) -> None:
    for k in ref[0]:
        torch.testing.assert_close(torch.stack([o[k] for o in ours]),
                                   torch.stack([r[k] for r in ref]), rtol=1e-10, atol=1e-12,
                                   msg=lambda m, k=k: f"{k} (index = (step, ...)): {m}")


@pytest.mark.parametrize("problem", sorted(PROBLEMS))
def test_asgd_average_matches_torch_ax(problem):
    _, states = _run_with_state(PROBLEMS[problem],
                                optim.asgd(1e-4, lambd=1e-3, t0=50, weight_decay=0.01))
    module = PROBLEMS[problem]()
    opt = torch.optim.ASGD(module.parameters(), lr=1e-4, lambd=1e-3, t0=50, weight_decay=0.01)
    names = [n for n, _ in module.named_parameters()]
    ref = []
    for _ in range(STEPS):
        opt.zero_grad()
        module().backward()
        opt.step()
        ref.append({n: opt.state[p]["ax"].clone() for n, p in zip(names, module.parameters(),
                                                                   strict=True)})
    ours = [optim.averaged_params(s) for s in states]
    _stack_close(ours, ref)
    # Averaging started at t0: the average has left the params.
    assert not torch.allclose(ours[-1][names[0]], _snapshot(module)[names[0]], rtol=1e-6)


def test_muon_matches_torch_muon_with_adamw_for_the_rest():
    lr = 0.02
    ours = run_ours(MLP, optim.muon(lr))  # 2-D weights: Muon; biases: AdamW(lr, wd=0.01)
    module = MLP()
    named = list(module.named_parameters())
    matrices = [p for _, p in named if p.ndim == 2]
    others = [p for _, p in named if p.ndim != 2]
    muon = torch.optim.Muon(matrices, lr=lr)  # weight_decay=0.1, momentum=0.95, nesterov
    adamw = torch.optim.AdamW(others, lr=lr, weight_decay=0.01)
    reference = []
    for _ in range(STEPS):
        muon.zero_grad()
        adamw.zero_grad()
        module().backward()
        muon.step()
        adamw.step()
        reference.append(_snapshot(module))
    assert_trajectories_close(ours, reference)


@pytest.mark.parametrize("adjust_lr_fn", ["match_rms_adamw", "spectral_unclamped"])
def test_muon_options_match_torch(adjust_lr_fn):
    lr = 0.01

    class Matrix(nn.Module):  # a 2-D-only problem: tall and wide factors of a target
        def __init__(self) -> None:
            super().__init__()
            g = torch.Generator().manual_seed(1)
            self.a = nn.Parameter(torch.randn(6, 3, generator=g, dtype=torch.float64))
            self.b = nn.Parameter(torch.randn(3, 5, generator=g, dtype=torch.float64))
            self.register_buffer("t", torch.randn(6, 5, generator=g, dtype=torch.float64))

        def forward(self):
            return ((self.a @ self.b - self.t) ** 2).mean()

    kw = dict(weight_decay=0.05, momentum=0.9, nesterov=False, ns_steps=4,
              adjust_lr_fn=adjust_lr_fn)
    ours = run_ours(Matrix, optim.muon(lr, **kw))
    reference, _ = run_torch(Matrix, lambda m: torch.optim.Muon(m.parameters(), lr=lr, **kw))
    assert_trajectories_close(ours, reference)


# ---------------------------------------------------------------------------------------------
# Weight averaging against torch.optim.swa_utils.AveragedModel.


def _averaged_reference(problem, make_opt, averaged_model, include):
    module = problem()
    opt = make_opt(module)
    avg = averaged_model(module)
    out = []
    for t in range(STEPS):
        opt.zero_grad()
        module().backward()
        opt.step()
        if include(t):
            avg.update_parameters(module)
        out.append({n: p.detach().clone() for n, p in avg.module.named_parameters()})
    return out


@pytest.mark.parametrize("problem", sorted(PROBLEMS))
def test_ema_params_matches_averaged_model_ema(problem):
    swa = torch.optim.swa_utils
    _, states = _run_with_state(PROBLEMS[problem],
                                optim.chain(optim.adam(1e-2), optim.ema_params(0.9)))
    ref = _averaged_reference(
        PROBLEMS[problem], lambda m: torch.optim.Adam(m.parameters(), lr=1e-2),
        lambda m: swa.AveragedModel(m, multi_avg_fn=swa.get_ema_multi_avg_fn(0.9)),
        lambda t: True)
    _stack_close([optim.averaged_params(s) for s in states], ref)


@pytest.mark.parametrize("problem", sorted(PROBLEMS))
def test_swa_params_matches_averaged_model_swa(problem):
    start, every = 50, 3
    _, states = _run_with_state(
        PROBLEMS[problem],
        optim.chain(optim.sgd(1e-4, momentum=0.9), optim.swa_params(start=start, every=every)))
    ref = _averaged_reference(
        PROBLEMS[problem], lambda m: torch.optim.SGD(m.parameters(), lr=1e-4, momentum=0.9),
        torch.optim.swa_utils.AveragedModel,
        lambda t: t >= start and (t - start) % every == 0)
    ours = [optim.averaged_params(s) for s in states]
    _stack_close(ours[start:], ref[start:])  # before start torch holds the initial copy
    assert states[-1][1].n_averaged.item() == len(range(start, STEPS, every))
