"""K steps per call (``compile_step(steps_per_call=K)``): the numbers of K single steps, one
compile per step shape, and fit's logs, evals and checkpoints on K-boundaries."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import functrain as ft
from functrain._multistep import group_batches


class Losses(ft.Callback):
    def __init__(self):
        self.logged = []

    def on_log(self, loop, values):
        self.logged.append((loop.step, values["train/loss"]))


def _setup(n_batches=8, seed=0):
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
               for _ in range(n_batches)]
    return model, step, batches


def _assert_same_state(a, b):
    assert int(a.step) == int(b.step)
    for x, y in zip(ft.tree.leaves((a.params, a.opt_state)),
                    ft.tree.leaves((b.params, b.opt_state)), strict=True):
        assert torch.equal(x, y)


@pytest.mark.parametrize("backend", ["eager", "inductor"])
def test_k_steps_per_call_equal_k_single_steps(backend):
    model, step, batches = _setup()
    single = ft.compile_step(step, compile=backend)
    s1 = ft.TrainState.create(model, ft.optim.adamw(1e-2), seed=3)
    for b in batches:
        s1, _ = single(s1, b)
    multi = ft.compile_step(step, compile=backend, steps_per_call=4)
    s4, window = ft.TrainState.create(model, ft.optim.adamw(1e-2), seed=3), None
    for i in range(0, len(batches), 4):
        s4, window = multi.run_steps(s4, ft.stack_batches(batches[i:i + 4]), window)
    _assert_same_state(s1, s4)
    assert single.read_metrics() == window.compute()  # merged step by step, as single calls
    if backend != "eager":
        assert (single.compiles, multi.compiles) == (1, 1)


def test_fit_with_k_steps_per_call_equals_single_steps_and_logs_on_k_boundaries():
    # 10 batches per epoch, K = 4: per epoch two 4-step calls and two single steps.
    model, step, batches = _setup(n_batches=10)
    runs = {}
    for k in (1, 4):
        losses = Losses()
        state = ft.TrainState.create(model, ft.optim.adamw(1e-2), seed=3)
        runner = ft.compile_step(step, compile="inductor", steps_per_call=k)
        log = ft.Logging(every=4, loggers=[], progress=False, summary=False)
        runs[k] = (ft.fit(runner, state, batches, epochs=2, callbacks=[losses, log]),
                   losses.logged, runner)
    _assert_same_state(runs[1][0], runs[4][0])
    # Windows close at the first K-boundary at or after each multiple of 4, and at epoch ends;
    # where both runs close one after the same steps, its value is the same.
    assert [s for s, _ in runs[1][1]] == [4, 8, 10, 12, 16, 20]
    assert [s for s, _ in runs[4][1]] == [4, 8, 10, 14, 18, 20]
    assert runs[1][1][:3] == runs[4][1][:3]
    assert runs[4][2].compiles == 2 and runs[4][2].recompiles == []  # 4-step graph + 1-step


def test_fit_k_steps_stops_at_max_steps_and_evaluates_at_the_first_k_boundary_after():
    model, step, batches = _setup(n_batches=10)
    evals = []

    class Evals(ft.Callback):
        def on_eval(self, loop, values):
            evals.append(loop.step)

    state = ft.TrainState.create(model, ft.optim.sgd(0.1), seed=0)
    runner = ft.compile_step(step, compile="eager", steps_per_call=4)
    state = ft.fit(runner, state, batches, max_steps=7, eval_every=3,
                   eval_fn=lambda s, b: {"n": torch.tensor(1.0)}, eval_loader=batches[:1],
                   callbacks=[Evals(), ft.Logging.quiet()])
    assert int(state.step) == 7
    assert evals[:2] == [4, 6] and evals[-1] == 7  # 3 falls inside the first call: after it


def test_run_steps_checks_its_batches():
    model, step, batches = _setup()
    state = ft.TrainState.create(model, ft.optim.sgd(0.1))
    with pytest.raises(ValueError, match="steps_per_call=1"):
        ft.compile_step(step, compile="eager").run_steps(state, batches[0], None)
    with pytest.raises(ValueError, match="first axis of steps_per_call=4"):
        ft.compile_step(step, compile="eager", steps_per_call=4).run_steps(
            state, ft.stack_batches(batches[:3]), None)
    with pytest.raises(TypeError, match="steps_per_call"):
        ft.compile_step(step, steps_per_call=0.5)


def test_group_batches_keeps_order_and_shapes():
    xs = [torch.full((2,), float(i)) for i in range(5)] + [torch.zeros(1)]
    groups = list(group_batches(xs, 2))
    assert [n for n, _ in groups] == [2, 2, 1, 1]
    flat = [b for n, g in groups for b in (g.unbind(0) if n > 1 else [g])]
    assert all(torch.equal(a, b) for a, b in zip(flat, xs, strict=True))
    assert [n for n, _ in group_batches(xs, 2, limit=3)] == [2, 1]


def test_first_compile_is_shown_and_timed(monkeypatch):
    import functrain._compile_status as cs

    monkeypatch.setattr(cs.Compiling.__init__, "__defaults__", (None, 1.0, 0.0))  # no delay
    model, step, batches = _setup()
    runner = ft.compile_step(step, compile="inductor")
    shown = []
    runner.status = shown.append
    state = ft.TrainState.create(model, ft.optim.sgd(0.1))
    for b in batches[:3]:
        state, _ = runner(state, b)
    assert shown[0].startswith("compiling (") and shown[-1] is None
    assert shown.count(None) == 1  # only the first call compiled
    assert runner.compiles == 1 and runner.compile_time > 0


def test_fit_summary_reports_compile_time(capsys):
    model, step, batches = _setup()
    state = ft.TrainState.create(model, ft.optim.sgd(0.1))
    ft.fit(step, state, batches, epochs=1, compile="inductor",
           callbacks=[ft.Logging(loggers=[], progress=False)])
    out = capsys.readouterr().out
    assert "compiles" in out and "compile time" in out
    line = next(x for x in out.splitlines() if "compile time" in x)
    assert float(line.split()[-2]) > 0
