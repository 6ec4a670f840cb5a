"""functrain's step cache: a later process loads the compiled step instead of tracing it, gets
bit-identical results, and never runs an artifact whose step, model code or values changed.

Hits and misses are counted with torch's compile counters (group ``functrain``), not timed.
The cache covers Inductor on the CPU, so every runner here is placed there.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings

import pytest
import torch
from torch import nn

import functrain as ft
from functrain import _step_cache

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CHILD = '''
import json, sys
import torch
from torch import nn
import functrain as ft
from torch._dynamo.utils import counters


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(6, 16)
        self.b = nn.Linear(16, 3)

    def forward(self, x):
        return self.b(nn.functional.dropout(self.a(x).{act}(), 0.25, self.training))


def main():
    torch.manual_seed(0)
    model = Net()

    def step(state, batch):
        x, y = batch
        key = ft.random.fold_in(state.rng, state.step)

        def loss_fn(params):
            logits, _ = ft.call(model, params, state.buffers, x, rng=key, train=True)
            return {scale}nn.functional.cross_entropy(logits, y)

        grads, loss = torch.func.grad_and_value(loss_fn)(state.params)
        return state.apply_gradients(grads), {{"loss": loss}}

    g = torch.Generator().manual_seed(0)
    batches = [(torch.randn(8, 6, generator=g), torch.randint(3, (8,), generator=g))
               for _ in range(3)]
    state = ft.TrainState.create(model, ft.optim.adam(float(sys.argv[1])), seed=1)
    run = ft.compile_step(step, compile="inductor", device="cpu")
    for b in batches:
        state, _ = run(state, b)
    print(json.dumps({{"counters": dict(counters["functrain"]), "hits": run.cache_hits,
                      "compiles": run.compiles,
                      "params": [x.tolist() for x in ft.tree.leaves(state.params)]}}))


main()
'''


def _run(tmp_path, cache_dir, act="relu", scale="", lr="0.01", env=None):
    script = tmp_path / f"child_{act}_{len(scale)}.py"
    script.write_text(CHILD.format(act=act, scale=scale))
    out = subprocess.run(
        [sys.executable, str(script), lr], capture_output=True, text=True, timeout=600,
        env={**os.environ, "PYTHONPATH": ROOT, "OMP_NUM_THREADS": "1",
             "TORCHINDUCTOR_CACHE_DIR": str(cache_dir), **(env or {})})
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_a_second_process_loads_the_step_and_a_changed_step_or_model_does_not(tmp_path):
    cache = tmp_path / "cache"
    cold = _run(tmp_path, cache)
    assert cold["counters"].get("step_cache_saved") == 1 and cold["hits"] == 0
    warm = _run(tmp_path, cache)
    assert warm["counters"] == {"step_cache_hit": 1}
    assert warm["hits"] == 1 and warm["compiles"] == 1
    assert warm["params"] == cold["params"]  # bit for bit (JSON floats round-trip exactly)
    off = _run(tmp_path, tmp_path / "off", env={"FUNCTRAIN_STEP_CACHE": "0"})
    assert off["counters"] == {} and off["params"] == cold["params"]
    assert not os.path.exists(tmp_path / "off" / "functrain_steps")

    # The step's own code changed: another key.
    scaled = _run(tmp_path, cache, scale="2 * ")
    assert "step_cache_hit" not in scaled["counters"] and scaled["params"] != cold["params"]
    # Only the model's forward changed (same step code, same parameter shapes): the traced
    # source no longer matches, so the artifact is not used.
    tanh = _run(tmp_path, cache, act="tanh")
    assert "step_cache_hit" not in tanh["counters"]
    reference = _run(tmp_path, tmp_path / "off", act="tanh", env={"FUNCTRAIN_STEP_CACHE": "0"})
    assert tanh["params"] == reference["params"] != cold["params"]
    # A value the step reads changed (the learning rate in the optimizer's closure).
    lr = _run(tmp_path, cache, lr="0.05")
    assert "step_cache_hit" not in lr["counters"] and lr["params"] != cold["params"]


def _setup():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 7), nn.ReLU(), nn.Linear(7, 2))

    def step(state, batch):
        x, y = batch

        def loss_fn(params):
            out, _ = ft.call(model, params, state.buffers, x)
            return ((out - y) ** 2).mean()

        grads, loss = torch.func.grad_and_value(loss_fn)(state.params)
        return state.apply_gradients(grads), {"loss": loss}

    g = torch.Generator().manual_seed(0)
    batches = [(torch.randn(4, 5, generator=g), torch.randn(4, 2, generator=g))
               for _ in range(3)]
    return model, step, batches


def _train(model, step, batches, lr=0.1, **kw):
    run = ft.compile_step(step, compile="inductor", device="cpu", **kw)
    state = ft.TrainState.create(model, ft.optim.sgd(lr))
    for b in batches:
        state, _ = run(state, b)
    return run, state


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    from torch._inductor import config

    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv(_step_cache.ENV, raising=False)
    assert not config.force_disable_caches
    return tmp_path / "functrain_steps"


def _same(a, b):
    return all(torch.equal(x, y) for x, y in zip(ft.tree.leaves(a.params),
                                                 ft.tree.leaves(b.params), strict=True))


def test_a_runner_loads_what_another_saved_and_a_new_shape_compiles(cache_dir):
    model, step, batches = _setup()
    first, s1 = _train(model, step, batches)
    assert first.cache_hits == 0 and len(os.listdir(cache_dir)) == 1
    second, s2 = _train(model, step, batches)
    assert second.cache_hits == 1 and second.compiles == 1 and _same(s1, s2)
    # A batch of another size fails the loaded step's guards: Dynamo compiles it (reported
    # like any recompile), and the numbers are those of an uncached runner.
    wide = [(torch.cat([x, x]), torch.cat([y, y])) for x, y in batches]
    with pytest.warns(UserWarning, match="recompil"):
        for b in wide:
            s2, _ = second(s2, b)
    assert second.compiles == 2
    ref, s_ref = _train(model, step, batches, cache=False)
    with pytest.warns(UserWarning, match="recompil"):
        for b in wide:
            s_ref, _ = ref(s_ref, b)
    assert _same(s2, s_ref)


def test_a_changed_closure_value_is_not_served_a_stale_step(cache_dir):
    model, step, batches = _setup()
    _train(model, step, batches, lr=0.1)
    run, state = _train(model, step, batches, lr=0.3)
    assert run.cache_hits == 0
    _, ref = _train(model, step, batches, lr=0.3, cache=False)
    assert _same(state, ref)


SCALE = 1.0  # a global the step of _scaled_setup reads: its trace holds the value


def _scaled_setup():
    model, _, batches = _setup()

    def step(state, batch):
        x, y = batch

        def loss_fn(params):
            out, _ = ft.call(model, params, state.buffers, x)
            return SCALE * ((out - y) ** 2).mean()

        grads, loss = torch.func.grad_and_value(loss_fn)(state.params)
        return state.apply_gradients(grads), {"loss": loss}

    return model, step, batches


@pytest.mark.parametrize("loaded", [False, True], ids=["compiled-here", "loaded"])
def test_a_global_changed_between_calls_leaves_the_cached_step(cache_dir, monkeypatch, loaded):
    # Dynamo guards the value of a global the step read; a cached step answers to it on every
    # call too (it is not among the guards an artifact keeps): Dynamo compiles anew, reported
    # as a recompile naming the global, and the numbers are those of an uncached runner.
    this = sys.modules[__name__]
    model, step, batches = _scaled_setup()
    if loaded:  # another runner compiles and saves the step first
        _train(model, step, batches[:1])

    def train(**kw):
        monkeypatch.setattr(this, "SCALE", 1.0)
        run = ft.compile_step(step, compile="inductor", device="cpu", **kw)
        state, _ = run(ft.TrainState.create(model, ft.optim.sgd(0.1)), batches[0])
        monkeypatch.setattr(this, "SCALE", 3.0)
        with pytest.warns(UserWarning, match=r"recompiled .*SCALE"):
            state, _ = run(state, batches[1])
        state, _ = run(state, batches[2])
        return run, state

    run, state = train()
    assert run.cache_hits == int(loaded) and run.compiles == 2
    assert run.recompiles[0][1].endswith("SCALE changed (float 1.0 -> float 3.0)")
    _, ref = train(cache=False)
    assert _same(state, ref)


MODEL = None  # a global model the steps of _global_model_step call
CONFIG: dict = {}  # a global dict _global_model_step reads one item of


def _global_model_step(state, batch):
    x, y = batch

    def loss_fn(params):
        out, _ = ft.call(MODEL, params, state.buffers, x)
        return CONFIG["scale"] * ((out - y) ** 2).mean()

    grads, loss = torch.func.grad_and_value(loss_fn)(state.params)
    return state.apply_gradients(grads), {"loss": loss}


def _global_model(monkeypatch):
    torch.manual_seed(0)  # no flag or number on the activation: only its type can change
    model = nn.Sequential(nn.Linear(5, 7), nn.Sigmoid(), nn.Linear(7, 2))
    monkeypatch.setattr(sys.modules[__name__], "MODEL", model)
    monkeypatch.setattr(sys.modules[__name__], "CONFIG", {"scale": 2.0})
    return model


@pytest.mark.parametrize("k", [1, 2])
def test_a_module_swapped_between_runs_leaves_the_cached_step(cache_dir, monkeypatch, k):
    # Every guard on a global model is one an artifact cannot keep. A replaced submodule is a
    # structural change, which a cached step checks when a run starts (fit): Dynamo compiles
    # anew. With K steps per call, both cached steps (K steps, and 1 for an epoch's rest) check.
    from torch._dynamo.utils import counters

    _, _, batches = _setup()
    batches = batches + batches[:2]  # 5: with K = 2, every epoch ends with a single step

    def train(**kw):
        model = _global_model(monkeypatch)
        run = ft.compile_step(_global_model_step, compile="inductor", device="cpu",
                              steps_per_call=k, **kw)
        state = ft.TrainState.create(model, ft.optim.sgd(0.1))
        state = ft.fit(run, state, batches, epochs=1, callbacks=[ft.Logging.quiet()])
        model[1] = nn.Tanh()
        state = ft.fit(run, state, batches, epochs=2, callbacks=[ft.Logging.quiet()])
        return run, state

    counters["functrain"].clear()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # Dynamo would count it a recompile; here it is quiet
        run, state = train()
    assert run.compiles == 2 * len({1, k}) and run.recompiles == []
    assert counters["functrain"]["step_cache_handover"] == len({1, k})
    with pytest.warns(UserWarning, match="recompiled"):
        _, ref = train(cache=False)
    assert _same(state, ref)


def test_a_global_dict_grown_between_runs_is_no_recompile(cache_dir, monkeypatch):
    # The step reads one item of a global dict; 300 new keys (more than a fingerprint holds)
    # change nothing for Dynamo. The cached step hands over to Dynamo's path quietly, so even
    # on_recompile="raise" trains on, with the numbers of an uncached runner.
    _, _, batches = _setup()

    def train(**kw):
        model = _global_model(monkeypatch)
        run = ft.compile_step(_global_model_step, compile="inductor", device="cpu",
                              on_recompile="raise", **kw)
        state = ft.TrainState.create(model, ft.optim.sgd(0.1))
        state = ft.fit(run, state, batches, epochs=1, callbacks=[ft.Logging.quiet()])
        CONFIG.update({f"k{i}": i for i in range(300)})
        state = ft.fit(run, state, batches, epochs=1, callbacks=[ft.Logging.quiet()])
        return state

    assert _same(train(), train(cache=False))


def test_cache_off_by_argument_or_environment(cache_dir, monkeypatch):
    model, step, batches = _setup()
    _train(model, step, batches, cache=False)
    assert not cache_dir.exists()
    monkeypatch.setenv(_step_cache.ENV, "0")
    assert not _step_cache.enabled()
    run, _ = _train(model, step, batches)
    assert not cache_dir.exists() and run.cache_hits == 0


def test_not_used_inside_a_process_group(cache_dir, tmp_path):
    # A traced step constant-folds dist.get_rank(): one rank's artifact would give another
    # rank its dropout masks, so an initialized group turns the cache off (one process here).
    import torch.distributed as dist

    model, step, batches = _setup()
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0,
                            world_size=1)
    try:
        assert _step_cache.in_process_group()
        run, _ = _train(model, step, batches)
        assert run.compiles == 1 and run.cache_hits == 0 and not cache_dir.exists()
    finally:
        dist.destroy_process_group()
    assert not _step_cache.in_process_group()
    run, _ = _train(model, step, batches)
    assert run.cache_hits == 0 and len(os.listdir(cache_dir)) == 1


def test_fingerprint_tells_values_functions_and_tensors_apart():
    fp = _step_cache.fingerprint
    assert fp({"a": (1, 2.0)}) == fp({"a": (1, 2.0)}) != fp({"a": (1, 2.5)})
    assert fp(torch.zeros(2, 3)) == fp(torch.ones(2, 3)) != fp(torch.zeros(3, 2))

    def f(x):
        return x + 1

    def g(x):
        return x + 2

    assert fp(f) != fp(g) and fp(nn.Linear) == fp(nn.Linear) != fp(nn.Conv1d)
    with pytest.raises(_step_cache.Unfingerprintable):
        fp(list(range(1000)))


def test_a_prekey_is_the_key_without_the_compilers_configs_and_is_marked_once_keyed(
        cache_dir):
    def step(state, x):
        return {"w": state["w"] + x.sum()}, {}

    cache = _step_cache.StepCache(step, ("inductor", True))
    args = ({"w": torch.zeros(3)}, torch.ones(2))
    pre = cache.prekey("_inner", args)
    assert pre == cache.prekey("_inner", ({"w": torch.ones(3)}, torch.zeros(2)))  # metadata
    assert pre not in (None, cache.key("_inner", args))
    assert pre != cache.prekey("_inner", ({"w": torch.zeros(4)}, torch.ones(2)))
    assert pre != _step_cache.StepCache(step, ("inductor", False)).prekey("_inner", args)
    assert not cache.keyed(pre)
    cache.mark_keyed(pre)
    assert cache.keyed(pre) and (cache_dir / f"{pre}.keyed").exists()
    cache.mark_keyed(pre)  # again: no error
    assert cache.keyed(pre)


def test_fit_summary_says_whether_the_compile_was_warm(cache_dir, capsys):
    for expected in ("cold: traced and compiled", "warm: 1 of 1 loaded from the step cache"):
        model, step, batches = _setup()  # a new step function: fit keeps a runner per step
        state = ft.TrainState.create(model, ft.optim.sgd(0.1))
        ft.fit(step, state, batches, epochs=1, compile="inductor", device="cpu",
               callbacks=[ft.Logging(loggers=[], progress=False)])
        line = next(x for x in capsys.readouterr().out.splitlines() if "compiled " in x)
        assert expected in line


def test_a_runner_showing_progress_on_a_file_still_saves(cache_dir, tmp_path):
    model, step, batches = _setup()
    with open(tmp_path / "bar.txt", "w") as f:
        class Bar:  # what fit's progress bar is: an object holding a file
            def show(self, text):
                f.write(f"{text}\n")

        for expected_hits in (0, 1):
            run = ft.compile_step(step, compile="inductor", device="cpu")
            run.status = Bar().show
            state = ft.TrainState.create(model, ft.optim.sgd(0.1))
            for b in batches:
                state, _ = run(state, b)
            assert run.cache_hits == expected_hits and run.compiles == 1


def test_a_step_that_cannot_be_saved_compiles_once_and_is_remembered(cache_dir, tmp_path):
    from torch._dynamo.utils import counters

    model, step, batches = _setup()
    with open(tmp_path / "log.txt", "w") as log:
        def logged(state, batch):
            log.name  # noqa: B018 (a file in the step's closure cannot be pickled)
            return step(state, batch)

        counters["functrain"].clear()
        first, s1 = _train(model, logged, batches)
        assert dict(counters["functrain"]) == {"step_cache_miss": 1,
                                               "step_cache_unsaveable": 1}
        second, s2 = _train(model, logged, batches)
    assert first.compiles == second.compiles == 1 and second.cache_hits == 0
    assert dict(counters["functrain"]) == {"step_cache_miss": 1, "step_cache_unsaveable": 1}
    assert _same(s1, s2)
