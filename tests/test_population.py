"""Populations: N models in one vmapped, compiled step, each equal to the model trained alone."""

from __future__ import annotations

import math
import re
import warnings

import pytest
import torch
from torch import nn

import functrain as ft
from functrain import population as pop_lib

SEEDS = [0, 1, 2]
LRS = [0.1, 0.03, 0.01]


def _make() -> nn.Module:
    return nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Dropout(0.3), nn.Linear(16, 3))


def _tx():
    return ft.optim.inject_hyperparams(ft.optim.adam)(learning_rate=1e-3)


def _step(state, batch):
    # Reads the model from the state (shared by the members) and draws dropout from the
    # member's own key.
    x, y = batch
    key = ft.random.fold_in(state.rng, state.step)

    def loss_fn(params):
        out, _ = ft.call(state.module, params, state.buffers, x, rng=key, train=True)
        return nn.functional.cross_entropy(out, y), out

    grads, (loss, out) = torch.func.grad_and_value(loss_fn, has_aux=True)(state.params)
    return state.apply_gradients(grads), {
        "loss": loss, "acc": ft.metrics.Accuracy.from_logits(out, y)}


def _eval(state, batch):
    x, y = batch
    out, _ = ft.call(state.module, state.params, state.buffers, x, train=False)
    return {"loss": nn.functional.cross_entropy(out, y)}


def _data(n=5, batch=16, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(batch, 6, generator=g), torch.randint(0, 3, (batch,), generator=g))
            for _ in range(n)]


def _alone(seed: int, lr: float, tx) -> ft.TrainState:
    """Member built by hand, the way a user would for a single run."""
    torch.manual_seed(seed)
    state = ft.TrainState.create(_make(), tx, seed=seed)
    hp = {**state.opt_state.hyperparams, "learning_rate": torch.tensor(lr)}
    return state.replace(opt_state=state.opt_state._replace(hyperparams=hp))


def _close(a, b, **kw):
    for (p, x), y in zip(ft.tree.leaves_with_path(a, "state"), ft.tree.leaves(b)):
        torch.testing.assert_close(x, y, msg=p, **kw)


class _Record(ft.Callback):
    def __init__(self):
        self.logs = []

    def on_log(self, loop, metrics):
        self.logs.append(dict(metrics))


def test_create_builds_each_member_as_alone():
    tx = _tx()
    pop = pop_lib.create(_make, tx, seeds=SEEDS, hparams={"learning_rate": LRS})
    assert pop.size == 3 and pop.active.tolist() == [True] * 3 and int(pop.step) == 0
    for i, (seed, lr) in enumerate(zip(SEEDS, LRS)):
        member = pop_lib.select(pop, i)
        assert isinstance(member, ft.TrainState) and member.tx is tx
        _close(member, _alone(seed, lr, tx), rtol=0, atol=0)
    # seeds=N means 0..N-1; an nn.Module gives every member its weights
    module = _make()
    same = pop_lib.create(module, tx, seeds=2)
    assert torch.equal(same.members.params["0.weight"][0], module[0].weight.detach())
    assert torch.equal(same.members.params["0.weight"][1], module[0].weight.detach())
    assert torch.equal(same.members.rng[1], ft.random.key(1))


def test_member_equals_member_trained_alone_compiled_once():
    """Member i of a compiled population (fit, compile='auto') equals member i trained alone
    (eager), with keyed dropout and a learning-rate sweep; the population compiles once."""
    tx = _tx()
    data = _data()
    pop = pop_lib.create(_make, tx, seeds=SEEDS, hparams={"learning_rate": LRS})
    rec = _Record()
    step = ft.compile_step(pop_lib.vmap(_step), compile="auto", on_recompile="raise")
    pop = ft.fit(step, pop, data, epochs=2, callbacks=[ft.Logging.quiet(5), rec])
    assert int(pop.step) == 10
    for i, (seed, lr) in enumerate(zip(SEEDS, LRS)):
        run = ft.compile_step(_step, compile="eager")
        alone = _alone(seed, lr, tx)
        losses = []
        for _ in range(2):
            for b in data:
                alone, m = run(alone, b)
                losses.append(float(m["loss"]))
        _close(pop_lib.select(pop, i), alone, rtol=1e-4, atol=1e-5)
        # per-member metrics: the first window (5 steps) is member i's mean loss
        assert rec.logs[0][f"train/loss/{i}"] == pytest.approx(sum(losses[:5]) / 5, rel=1e-4)
    first = rec.logs[0]
    members = [first[f"train/loss/{i}"] for i in range(3)]
    assert first["train/loss/mean"] == pytest.approx(sum(members) / 3, rel=1e-6)
    assert first["train/loss/best"] == pytest.approx(min(members), rel=1e-6)
    accs = [first[f"train/acc/{i}"] for i in range(3)]
    assert first["train/acc/best"] == pytest.approx(max(accs), rel=1e-6)


def test_compile_step_counts_one_compile_and_freeze_does_not_recompile():
    tx = _tx()
    data = _data(4)
    pop = pop_lib.create(_make, tx, seeds=SEEDS, hparams={"learning_rate": LRS})
    run = ft.compile_step(pop_lib.vmap(_step, per_member=False), compile="inductor",
                          on_recompile="raise")
    for b in data[:2]:
        pop, _ = run(pop, b)
    frozen = pop_lib.select(pop, 1)
    pop = pop_lib.freeze(pop, 1)
    for b in data[2:]:
        pop, _ = run(pop, b)
    assert run.compiles == 1 and not run.recompiles
    assert pop.active.tolist() == [True, False, True] and int(pop.step) == 4
    _close(pop_lib.select(pop, 1), frozen, rtol=0, atol=0)  # member 1 frozen in place
    assert pop.members.step.tolist() == [4, 2, 4]
    assert sorted(run.read_metrics()) == ["acc/best", "acc/mean", "loss/best", "loss/mean"]


def test_per_member_early_stopping_freezes_a_member_and_stops_when_all_are_frozen():
    tx = _tx()
    data = _data(4)
    # member 0 has learning rate 0: its validation loss never improves, so it is frozen
    pop = pop_lib.create(_make, tx, seeds=[0, 1], hparams={"learning_rate": [0.0, 0.05]})
    start = pop_lib.select(pop, 0)
    stopper = pop_lib.EarlyStopping("val/loss", patience=2)
    pop = ft.fit(pop_lib.vmap(_step), pop, data, epochs=6, compile="eager",
                 eval_fn=pop_lib.vmap_eval(_eval), eval_loader=data[:2],
                 callbacks=[ft.Logging.quiet(), stopper])
    assert 0 in stopper.frozen and pop.active[0].item() is False
    # evaluations at steps 4 (best), 8 and 12 (no improvement twice): frozen at step 12;
    # with learning rate 0 its params are still the initial ones
    _close(pop_lib.select(pop, 0).params, start.params, rtol=0, atol=0)
    assert pop.members.step.tolist() == [12, 24] and int(pop.step) == 24
    assert stopper.state_dict()["wait"][0] >= 2
    # all frozen: the run stops
    loop = ft.Loop(state=pop, step=0, epoch=0)
    stopper.frozen = [0]
    stopper.wait = [0, 5]
    stopper.best = [0.0, -1.0]
    stopper.on_eval(loop, {"val/loss/0": 1.0, "val/loss/1": 1.0})
    assert loop.stop_reason and "every member" in loop.stop_reason
    assert loop.state.active.tolist() == [False, False]


def test_checkpoint_and_resume_with_a_population(tmp_path):
    tx = _tx()
    g = torch.Generator().manual_seed(3)
    x, y = torch.randn(96, 6, generator=g), torch.randint(0, 3, (96,), generator=g)
    loader = ft.data.ArrayLoader((x, y), 16, shuffle=True)

    def fresh():
        return pop_lib.create(_make, tx, seeds=SEEDS, hparams={"learning_rate": LRS})

    kw = dict(compile="eager", callbacks=[ft.Logging.quiet()])
    full = ft.fit(pop_lib.vmap(_step), fresh(), loader, max_steps=10, **kw)
    step = pop_lib.vmap(_step)
    ft.fit(step, fresh(), loader, max_steps=4, run_dir=tmp_path,
           **{**kw, "callbacks": [ft.Logging.quiet(), ft.Checkpointing(every=2)]})
    resumed = ft.fit(step, fresh(), loader, max_steps=10, run_dir=tmp_path, resume="auto",
                     **kw)
    assert int(resumed.step) == 10
    _close(resumed, full, rtol=0, atol=0)
    # a checkpoint restores into a population built the same way
    path = ft.checkpoint.CheckpointManager(tmp_path / "checkpoints").latest()
    back = ft.checkpoint.restore(path, like=fresh())
    assert isinstance(back, pop_lib.PopulationState) and back.size == 3


def test_split_batches_give_each_member_its_own_slice():
    tx = ft.optim.sgd(0.1)
    pop = pop_lib.create(_make, tx, seeds=[4, 5])
    data = _data(2)
    xs = torch.stack([data[0][0], data[1][0]])
    ys = torch.stack([data[0][1], data[1][1]])
    run = ft.compile_step(pop_lib.vmap(_step, batch="split"), compile="eager")
    pop, _ = run(pop, (xs, ys))
    for i, seed in enumerate([4, 5]):
        torch.manual_seed(seed)
        alone = ft.TrainState.create(_make(), tx, seed=seed)
        alone, _ = ft.compile_step(_step, compile="eager")(alone, data[i])
        _close(pop_lib.select(pop, i), alone, rtol=1e-5, atol=1e-6)


def test_hand_built_stacked_state_with_params_that_require_grad_compiles():
    """The issue's ensemble: torch.func.stack_module_state gives params that require grad;
    donation used to fail on them under compile='auto'."""
    torch.manual_seed(0)
    models = [nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3)) for _ in range(4)]
    params, buffers = torch.func.stack_module_state(models)
    assert all(p.requires_grad for p in params.values())
    tx = ft.optim.adam(1e-2)
    state = ft.TrainState(step=torch.zeros((), dtype=torch.int64), params=params,
                          buffers=buffers, opt_state=tx.init(params), rng=ft.random.key(0),
                          tx=tx, module=models[0])

    def step(state, batch):
        x, y = batch

        def loss_fn(p):
            out = torch.vmap(lambda q, b: torch.func.functional_call(
                state.module, (q, b), (x,)))(p, state.buffers)
            return nn.functional.cross_entropy(out.reshape(-1, 3), y.repeat(4))

        grads, loss = torch.func.grad_and_value(loss_fn)(state.params)
        return state.apply_gradients(grads), {"loss": loss}

    ref = ft.TrainState(step=state.step.clone(), params={k: v.detach().clone()
                                                         for k, v in params.items()},
                        buffers=buffers, opt_state=tx.init(params), rng=ft.random.key(0),
                        tx=tx, module=models[0])
    run = ft.compile_step(step, compile="auto", on_recompile="raise")
    eager = ft.compile_step(step, compile="eager")
    for b in _data(3):
        state, _ = run(state, b)
        ref, _ = eager(ref, b)
    assert run.compiles == 1
    _close(state, ref, rtol=1e-4, atol=1e-5)


def test_errors_name_the_argument():
    tx = ft.optim.sgd(0.1)
    with pytest.raises(TypeError, match=r"hparams: .*holds no hyperparameters.*HINT: .*"
                                        r"inject_hyperparams"):
        pop_lib.create(_make, tx, seeds=2, hparams={"learning_rate": [0.1, 0.2]})
    with pytest.raises(ValueError, match=r"hparams\['learning_rate'\]: expected 2 values"):
        pop_lib.create(_make, _tx(), seeds=2, hparams={"learning_rate": [0.1]})
    with pytest.raises(ValueError, match=r"hparams: expected names among .*'learning_rate'\]"
                                         r".*got 'momentum'"):
        pop_lib.create(_make, _tx(), seeds=2, hparams={"momentum": [0.1, 0.2]})
    with pytest.raises(TypeError, match=r"seeds: expected"):
        pop_lib.create(_make, tx, seeds=[])
    with pytest.raises(TypeError, match=r"model: expected"):
        pop_lib.create(3, tx, seeds=2)
    pop = pop_lib.create(_make, tx, seeds=2)
    with pytest.raises(ValueError, match=r"i: expected a member index in \[-2, 1\]"):
        pop_lib.select(pop, 2)
    with pytest.raises(ValueError, match=r"batch: expected one of 'shared', 'split'"):
        pop_lib.vmap(_step, batch="per-member")
    with pytest.raises(ValueError, match=r"reduce\[0\]: expected one of"):
        pop_lib.vmap(_step, reduce=("median",))
    state = ft.TrainState.create(_make(), tx)
    with pytest.raises(TypeError, match=r"PopulationState.*HINT: .*population.create"):
        pop_lib.vmap(_step)(state, _data(1)[0])
    other = ft.TrainState.create(_make(), ft.optim.sgd(0.1))
    with pytest.raises(ValueError, match=r"states\[1\].tx: expected the optimizer"):
        pop_lib.stack([state, other])
    with pytest.raises(ValueError, match=r"mode: expected one of 'min', 'max'"):
        pop_lib.EarlyStopping("val/loss", mode="lowest")


def test_best_and_mean_over_members_follow_each_members_window():
    stacked = ft.metrics.Mean(torch.tensor([3.0, 1.0, float("nan")]),
                              torch.tensor([1.0, 2.0, 0.0]))
    assert math.isnan(pop_lib.MeanOver(stacked).compute().item())  # an empty member window
    finite = ft.metrics.Mean(torch.tensor([3.0, 1.0]), torch.tensor([1.0, 2.0]))
    a = pop_lib.Best(finite, torch.tensor(False))
    b = pop_lib.Best(ft.metrics.Mean(torch.tensor([0.0, 4.0]), torch.tensor([1.0, 2.0])),
                     torch.tensor(False))
    merged = a.merge(b)  # member windows: 3/2 and 5/4
    assert merged.compute().item() == pytest.approx(1.25)
    assert pop_lib.MeanOver(finite).merge(pop_lib.MeanOver(b.members)).compute().item() == (
        pytest.approx((1.5 + 1.25) / 2))
    assert pop_lib.Best(finite, torch.tensor(True)).compute().item() == pytest.approx(3.0)
    assert math.isclose(pop_lib.Best(stacked, torch.tensor(False)).compute().item(), 0.5)


def test_population_sweep_example_short_run(tmp_path):
    import os
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run(
        [sys.executable, "examples/population_sweep.py", "--members", "3", "--steps", "40",
         "--compile", "eager", "--run-dir", str(tmp_path)],
        cwd=root, env={**os.environ, "PYTHONPATH": root}, capture_output=True, text=True,
        timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    table = out.stdout.split("test accuracy")[1]
    assert "1.00e-04" in table and "1.00e-01" in table and "best: member" in out.stdout
    assert (tmp_path / "metrics.jsonl").read_text().count("train/loss/2") > 0


def test_a_population_step_refuses_a_population_of_another_size():
    run = ft.compile_step(pop_lib.vmap(_step, per_member=False), compile="eager")
    pop, _ = run(pop_lib.create(_make, _tx(), seeds=2), _data(1)[0])
    with pytest.raises(ValueError, match=r"expected 2 members .*got 3.*HINT: .*vmap\(step\)"):
        run(pop_lib.create(_make, _tx(), seeds=3), _data(1)[0])


@pytest.fixture
def vmap_fallback_warnings():
    """Make torch.func.vmap warn whenever an op has no batching rule and falls back to a
    per-member loop (torch only offers a private switch for it; off again afterwards)."""
    switch = getattr(torch._C._functorch, "_set_vmap_fallback_warning_enabled", None)
    if switch is None:
        pytest.skip("this torch has no switch for vmap fallback warnings")
    switch(True)
    try:
        yield
    finally:
        switch(False)


def _fallbacks(caught) -> list[str]:
    return sorted({str(w.message).split("aten::")[1].split(" ")[0].rstrip(".")
                   for w in caught if "batching rule" in str(w.message)})


_BATCHED_OPTIMIZERS = {
    "adam": lambda: ft.optim.adam(1e-3), "adamw": lambda: ft.optim.adamw(1e-3),
    "adam_nesterov": lambda: ft.optim.adam(1e-3, nesterov=True),
    "injected_adam": lambda: ft.optim.inject_hyperparams(ft.optim.adam)(learning_rate=1e-3),
    "sgd_nesterov": lambda: ft.optim.sgd(0.1, momentum=0.9, nesterov=True),
    "rmsprop_centered": lambda: ft.optim.rmsprop(1e-3, centered=True, momentum=0.9),
    "adagrad": lambda: ft.optim.adagrad(0.1), "lion": lambda: ft.optim.lion(1e-3),
    "adabelief": lambda: ft.optim.adabelief(1e-3), "adadelta": lambda: ft.optim.adadelta(1.0),
    "adafactor": lambda: ft.optim.adafactor(1e-3), "adamax": lambda: ft.optim.adamax(1e-3),
    "adan": lambda: ft.optim.adan(1e-3), "amsgrad": lambda: ft.optim.amsgrad(1e-3),
    "asgd": lambda: ft.optim.asgd(1e-2), "lamb": lambda: ft.optim.lamb(1e-3),
    "lars": lambda: ft.optim.lars(1e-3), "nadamw": lambda: ft.optim.nadamw(1e-3),
    "radam": lambda: ft.optim.radam(1e-3), "rprop": lambda: ft.optim.rprop(1e-3),
    "signum": lambda: ft.optim.signum(1e-3), "sm3": lambda: ft.optim.sm3(1e-3),
    "yogi": lambda: ft.optim.yogi(1e-3), "novograd": lambda: ft.optim.novograd(1e-3),
    # Muon's bfloat16 iteration rounds batched and single matmuls apart: float32 here.
    "muon": lambda: ft.optim.muon(1e-3, ns_dtype=None), "prodigy": lambda: ft.optim.prodigy(),
    "schedule_free_adamw": lambda: ft.optim.schedule_free_adamw(1e-3),
    "adopt": lambda: ft.optim.adopt(1e-3), "ademamix": lambda: ft.optim.ademamix(1e-3),
    "clipped_adamw": lambda: ft.optim.chain(ft.optim.clip_by_global_norm(1.0),
                                            ft.optim.adamw(1e-3)),
}


@pytest.mark.parametrize("name", sorted(_BATCHED_OPTIMIZERS))
def test_optimizer_update_is_batched_by_vmap_without_per_member_fallback(
        name, vmap_fallback_warnings):
    """Every op of the update has a vmap batching rule (an in-place ``addcmul_`` had none, so
    every Adam-family population step ran a per-member loop there)."""
    opt = _BATCHED_OPTIMIZERS[name]()
    g = torch.Generator().manual_seed(0)
    params = {"w": torch.randn(3, 5, 4, generator=g), "b": torch.randn(3, 4, generator=g)}
    grads = ft.tree.map(lambda p: torch.randn(p.shape, generator=g), params)

    def two_updates(grads, params):
        state = opt.init(params)
        for _ in range(2):
            updates, state = opt.update(grads, state, params)
            params = ft.optim.apply_updates(params, updates)
        return params

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        batched = torch.func.vmap(two_updates)(grads, params)
    assert _fallbacks(caught) == []
    one = two_updates(ft.tree.map(lambda x: x[1], grads), ft.tree.map(lambda x: x[1], params))
    _close(ft.tree.map(lambda x: x[1], batched), one, rtol=1e-6, atol=1e-7)


def test_population_step_runs_without_vmap_fallback(vmap_fallback_warnings):
    """The whole population step (keyed dropout, AdamW, metrics, freezing) is batched."""
    pop = pop_lib.create(_make, ft.optim.adamw(1e-3, weight_decay=1e-2), seeds=SEEDS)
    step = pop_lib.vmap(_step)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for b in _data(2):
            pop, _ = step(pop, b)
    assert _fallbacks(caught) == [] and int(pop.step) == 2


def test_compiled_population_step_updates_the_stacked_state_in_place(monkeypatch):
    """Donation covers stacked states: inductor's population graph writes every member's new
    params and optimizer state into the population's own tensors (no copy back after the
    graph), and returns only the small per-member metric tensors. The graph's outputs are read
    from Inductor's Python wrapper (functrain's CPU default, a C++ wrapper, is turned off for
    that); the default's tensors are checked to stay in place too."""
    from torch._inductor.utils import run_and_get_code

    from functrain import _backend

    n = 4
    data = _data(3)
    default = ft.compile_step(pop_lib.vmap(_step, per_member=False), compile="inductor")
    pop = pop_lib.create(_make, ft.optim.adamw(1e-3, weight_decay=1e-2), seeds=n)
    pop, _ = default(pop, data[0])
    ptrs = [x.data_ptr() for x in ft.tree.leaves(pop)]
    for b in data[1:]:
        pop, _ = default(pop, b)
    assert [x.data_ptr() for x in ft.tree.leaves(pop)] == ptrs and default.compiles == 1

    monkeypatch.setattr(_backend, "CPU_OPTIONS", {})
    monkeypatch.setenv("FUNCTRAIN_STEP_CACHE", "0")  # (else it loads the default's artifact)
    pop = pop_lib.create(_make, ft.optim.adamw(1e-3, weight_decay=1e-2), seeds=n)
    run = ft.compile_step(pop_lib.vmap(_step, per_member=False), compile="inductor")
    (pop, _), codes = run_and_get_code(run, pop, data[0])
    assert run.compiles == 1 and len(codes) == 1
    code = codes[0]
    returned = re.findall(r"return \((.*)\)", code)[-1].replace(" ", "").strip(",").split(",")

    def allocated_shape(name: str) -> str:
        while True:  # follow inductor's buffer reuse ("buf7 = buf3; del buf3  # reuse")
            alloc = re.search(rf"\b{name} = empty_strided_cpu\(\(([0-9, ]*)\)", code)
            if alloc:
                return alloc.group(1)
            name = re.search(rf"\b{name} = (buf[0-9]+); del", code).group(1)

    shapes = {name: allocated_shape(name) for name in returned}
    # (N,) per-member metric fields or 0-d scalars: nothing shaped like a params leaf
    assert shapes and all(s.replace(" ", "") in (f"{n},", "") for s in shapes.values()), shapes
    ptrs = [x.data_ptr() for x in ft.tree.leaves(pop)]
    for b in data[1:]:
        pop, _ = run(pop, b)
    assert [x.data_ptr() for x in ft.tree.leaves(pop)] == ptrs
    assert run.compiles == 1
