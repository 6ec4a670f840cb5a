"""functrain._compat: each private torch API functrain uses still exists and does its job.

The XLA lane runs these same tests on its torch (tests/xla/test_xla_compat.py), so a torch
release that drops or changes one of these APIs fails here, by name, rather than deep in a run.
"""

from __future__ import annotations

import importlib
import inspect
import os
import pathlib
import subprocess
import sys

import pytest
import torch

import functrain as ft
from functrain import _compat


def test_with_own_code_gives_a_renamed_copy():
    def f(x, y=2):
        return x * y

    g = _compat.with_own_code(f, "functrain_step_test")
    assert g.__code__ is not f.__code__ and g.__code__.co_name == "functrain_step_test"
    assert g(3) == f(3) == 6 and g(3, y=4) == 12


def test_own_code_copies_compile_separately(compile_counter):
    def f(x):
        return x + 1

    a = torch.compile(_compat.with_own_code(f, "copy_a"), backend=compile_counter, fullgraph=True)
    b = torch.compile(_compat.with_own_code(f, "copy_b"), backend=compile_counter, fullgraph=True)
    x = torch.ones(3)
    assert torch.equal(a(x), b(x))
    assert compile_counter.count == 2  # one cache entry per copy, not one shared


def test_inductor_compile_matches_eager():
    def backend(gm, example_inputs):
        return _compat.inductor_compile(gm, example_inputs)

    def f(x):
        return torch.sin(x) * 2 + 1

    x = torch.linspace(-1, 1, 7)
    torch.testing.assert_close(torch.compile(f, backend=backend, fullgraph=True)(x), f(x))


def test_lookup_backend_finds_registered_backends():
    assert callable(_compat.lookup_backend("eager"))
    assert callable(_compat.lookup_backend("inductor"))


def test_mark_static_address_accepts_a_tensor():
    _compat.mark_static_address(torch.zeros(3))


def test_guard_failure_reason_names_the_failed_guard():
    def functrain_compat_probe(x, n):
        return x * n

    torch._dynamo.reset()
    f = torch.compile(functrain_compat_probe, backend="eager", dynamic=False)
    f(torch.ones(2), 2)
    f(torch.ones(2), 3)  # a new constant: the guard on n fails, Dynamo recompiles
    reason = _compat.guard_failure_reason("functrain_compat_probe")
    assert reason is not None and "n" in reason
    assert _compat.guard_failure_reason("no_such_code_object") is None


def test_fake_tensor_mode_and_real_tensors():
    mode = _compat.fake_tensor_mode()
    real = torch.ones(2, 3)
    fake = mode.from_tensor(real)
    with mode:
        out = fake @ torch.ones(3, 4)  # a real tensor is allowed in
        assert tuple(out.shape) == (2, 4) and type(out) is not torch.Tensor
        with _compat.real_tensors():
            meta = torch.empty(5, device="meta")
    assert type(meta) is torch.Tensor and meta.device.type == "meta"


def test_functional_call_key_error_is_recognised():
    model = torch.nn.Linear(2, 2)
    with pytest.raises(RuntimeError) as e:
        torch.func.functional_call(model, {"weight": torch.ones(2, 2)}, (torch.ones(2),),
                                   strict=True)
    assert _compat.is_functional_call_key_error(e.value)
    assert not _compat.is_functional_call_key_error(RuntimeError("shape mismatch"))
    assert not _compat.is_functional_call_key_error(ValueError("Missing key(s): 'w'."))


def test_autograd_device_queue_error_is_recognised():
    # The assertion only fires when torch_xla's runtime starts after the first backward pass,
    # which a test process cannot undo; the check is on its text.
    msg = "Expected device_ready_queues_.size() > 0 to be true, but got false."
    assert _compat.is_autograd_device_queue_error(RuntimeError(msg))
    assert not _compat.is_autograd_device_queue_error(RuntimeError("other"))


def test_private_samplers_are_recognised_and_refused_by_keyed():
    assert _compat.private_sampler_name(torch._standard_gamma) == "_standard_gamma"
    assert _compat.private_sampler_name(torch._sample_dirichlet) == "_sample_dirichlet"
    assert _compat.private_sampler_name(torch.add) is None
    assert _compat.private_sampler_name(object()) is None
    gamma = torch.distributions.Gamma(torch.ones(3), torch.ones(3))
    with ft.random.keyed(ft.random.key(0)):
        with pytest.raises(NotImplementedError, match=r"torch\._standard_gamma .*HINT"):
            gamma.sample()


@pytest.mark.parametrize("shape", [(4, 3), (8, 3, 5, 5), (2, 6, 7)])
def test_calculate_correct_fan(shape):
    receptive = 1
    for d in shape[2:]:
        receptive *= d
    t = torch.empty(shape)
    assert _compat.calculate_correct_fan(t, "fan_in") == shape[1] * receptive
    assert _compat.calculate_correct_fan(t, "fan_out") == shape[0] * receptive


def test_dcp_slice_file_reads_one_stored_tensor(tmp_path):
    import torch.distributed.checkpoint as dcp

    from functrain.checkpoint import _unpickler

    assert _compat.has_dcp_slice_file()
    w = torch.arange(6.0).reshape(2, 3)
    path = ft.checkpoint.save(tmp_path / "c", {"w": w})
    md = _unpickler._read_dcp_metadata(path / ".metadata")
    (info,) = md.storage_data.values()
    reader = dcp.FileSystemReader(path)
    with open(path / info.relative_path, "rb") as f:
        got = torch.load(_compat.dcp_slice_file(reader, f, info), weights_only=True)
    assert torch.equal(got, w)


def test_dcp_metadata_globals_exist():
    for module, name in _compat.dcp_metadata_globals():
        try:
            mod = importlib.import_module(module)
        except ImportError:
            assert module == "pathlib._local"  # Python < 3.13
            continue
        assert hasattr(mod, name), f"{module}.{name}"


def test_missing_private_api_raises_naming_it():
    with pytest.raises(RuntimeError, match=r"torch\.no_such_module\.thing.*HINT"):
        _compat._private("torch.no_such_module", "thing")
    with pytest.raises(RuntimeError, match=r"torch\.nn\.init\._no_such_fn"):
        _compat._private("torch.nn.init", "_no_such_fn")


@pytest.mark.parametrize("set_dir", [False, True])
def test_inductor_cache_dir_is_inductors_without_importing_it(set_dir, tmp_path, monkeypatch):
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    if set_dir:
        monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "rel" / ".." / "inductor"))
    ours = _compat.inductor_cache_dir()
    from torch._inductor.runtime.cache_dir_utils import cache_dir

    # The same folder (torch 2.9 leaves a set path as given, 2.14 makes it absolute); torch's
    # sets TORCHINDUCTOR_CACHE_DIR, which monkeypatch resets.
    assert ours == os.path.abspath(cache_dir())
    code = "import sys, functrain._compat as c; c.inductor_cache_dir(); " \
           "assert 'torch._inductor' not in sys.modules"
    assert subprocess.run([sys.executable, "-c", code], timeout=120).returncode == 0


def test_every_compat_function_is_tested_here():
    source = pathlib.Path(inspect.getfile(test_with_own_code_gives_a_renamed_copy)).read_text()
    untested = [n for n in _compat.__all__ if f"_compat.{n}(" not in source]
    assert not untested, untested


def test_all_reduce_in_graph_on_a_group_of_one():
    import torch.distributed as dist

    dist.init_process_group("gloo", rank=0, world_size=1, store=dist.HashStore())
    try:
        name = dist.group.WORLD.group_name
        x = torch.tensor([1.0, 2.0])
        assert torch.equal(_compat.all_reduce_in_graph(x, "sum", name), x)
        f = torch.compile(lambda t: _compat.all_reduce_in_graph(t * 2, "avg", name),
                          backend="eager", fullgraph=True)
        assert torch.equal(f(x), 2 * x)

        def both(t):  # two started before either is waited on, as pmean's buckets are
            a = _compat.start_all_reduce(t, "sum", name)
            b = _compat.start_all_reduce(t * 3, "avg", name)
            return _compat.wait_collective(a), _compat.wait_collective(b)

        for fn in (both, torch.compile(both, backend="eager", fullgraph=True)):
            a, b = fn(x)
            assert torch.equal(a, x) and torch.equal(b, 3 * x)
    finally:
        dist.destroy_process_group()


def test_register_inductor_pointwise_fuses_a_custom_op():
    # A toy keyed op: element j is (j ^ key[0]) + key[1]; lowered, it runs inside the consumer.
    from torch._inductor.utils import run_and_get_code

    def impl(key: torch.Tensor, n: int) -> torch.Tensor:
        return (torch.arange(n) ^ key[0]) + key[1]

    op = torch.library.custom_op("functrain_test::iota_xor", impl, mutates_args=())
    op.register_fake(lambda key, n: key.new_empty(n))

    def element(ops, k0, k1, index, n):
        return ops.add(ops.bitwise_xor(index(torch.int64), k0), k1)

    assert _compat.register_inductor_pointwise(torch.ops.functrain_test.iota_xor.default,
                                               torch.int64, element)
    f = torch.compile(lambda k: torch.ops.functrain_test.iota_xor(k, 10) * 2, fullgraph=True)
    key = torch.tensor([5, 7])
    with torch._inductor.config.patch(fx_graph_cache=False):
        out, (code, *_) = run_and_get_code(f, key)
    assert torch.equal(out, impl(key, 10) * 2)
    assert "torch.ops.functrain_test.iota_xor" not in code  # fused, not called
def test_register_pytree_constant_makes_a_leafless_node():
    from torch.utils import _pytree

    class Static:
        def __eq__(self, other):
            return isinstance(other, Static)

        def __hash__(self):
            return 0

    _compat.register_pytree_constant(Static)
    leaves, _ = _pytree.tree_flatten({"s": Static(), "x": torch.ones(1)})
    assert len(leaves) == 1


def test_outside_innermost_grad_detaches_one_level_only():
    x = torch.tensor([0.3, -1.2], dtype=torch.float64)
    assert _compat.outside_innermost_grad((x,))[0] is x  # no transform: unchanged

    def f(x):
        (y,) = _compat.outside_innermost_grad((x,))
        return (x * y.sin()).sum()  # y is a constant at this level only

    torch.testing.assert_close(torch.func.grad(f)(x), x.sin())
    # The outer grad still sees y: d/dx sum(sin(x)) = cos(x).
    torch.testing.assert_close(torch.func.grad(lambda x: torch.func.grad(f)(x).sum())(x),
                               x.cos())


def test_functorch_transform_active_inside_each_transform():
    seen = []

    def probe(x):
        seen.append(_compat.functorch_transform_active())
        return x.sum()

    x = torch.ones(3)
    probe(x)
    torch.func.grad(probe)(x)
    torch.func.vmap(probe)(torch.ones(2, 3))
    torch.func.jvp(probe, (x,), (x,))
    assert seen == [False, True, True, True]
    assert _compat.functorch_transform_active() is False


class _Owner:
    scale = 2.0


def _affine(self, x):
    return x * self.scale + 1


def test_the_step_cache_steps_aside_where_torch_cannot_save_a_compiled_step(monkeypatch):
    from functrain import _step_cache

    monkeypatch.delenv(_step_cache.ENV, raising=False)
    assert _step_cache.enabled()
    cache = _step_cache.StepCache(lambda state, batch: (state, {}), ())
    monkeypatch.setattr(_compat, "aot_compile_available", lambda: False)
    # The first call compiles the usual way (None), before looking at anything else.
    assert cache.first_call(None, None, ()) is None


def test_aot_compile_save_and_load_round_trip(tmp_path, monkeypatch):
    if not _compat.aot_compile_available():
        pytest.skip("this torch has no torch.compile(...).aot_compile (2.9: the XLA lane)")
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path))
    unsupported, helpers = _compat.aot_guard_names()
    assert "ID_MATCH" in unsupported and "___odict_getitem" in helpers

    def keep(entries):
        return [not (g.is_global or any(t in unsupported for t in
                                        (g.guard_type, *g.derived_guard_types)))
                for g in entries]

    owner, x = _Owner(), torch.arange(4.0)
    fn = _compat.with_own_code(_affine, "aot_affine")
    compiled = _compat.aot_compile_method(fn, owner, (x,), _compat.inductor_compile, keep)
    loaded = _compat.aot_load(_compat.aot_save(compiled), fn.__globals__)
    assert torch.equal(loaded.fn(owner, x), x * 2 + 1)
    assert _compat.source_checksums_match(loaded)
    check = loaded._artifacts.guard_manager.check
    assert check({"self": owner, "x": x}) and not check({"self": owner, "x": torch.ones(5)})


def test_skip_unused_triton_key_leaves_inductors_key_as_it_was():
    from torch._inductor import codecache

    if not hasattr(codecache, "triton_key"):
        pytest.skip("this torch's Inductor has no codecache.triton_key (2.9: the XLA lane)")
    codecache.triton_key.clear()  # as in a fresh process
    try:
        _compat.skip_unused_triton_key()
        _compat.skip_unused_triton_key()  # again: already set, nothing raised
        if not torch.cuda.is_available():
            assert codecache.triton_key() is None  # what get_system drops without CUDA anyway
    finally:
        codecache.triton_key.clear()


def test_assume_constant_result_sets_the_marker_torchs_decorator_sets(monkeypatch):
    import torch._dynamo  # noqa: F401  (loaded: torch's decorator is the reference)

    def by_torch():
        return 1

    def by_functrain():
        return 1

    torch.compiler.assume_constant_result(by_torch)
    monkeypatch.delitem(sys.modules, "torch._dynamo")  # as before Dynamo is first loaded
    assert _compat.assume_constant_result(by_functrain) is by_functrain
    assert vars(by_functrain) == vars(by_torch) == {"_dynamo_marked_constant": True}


def test_a_function_marked_before_dynamo_loads_runs_at_trace_time(monkeypatch):
    import torch._dynamo

    def untraceable():  # traced, a graph break; run (not traced), nothing
        torch._dynamo.graph_break()
        return 0.5

    def marked():
        return untraceable()

    monkeypatch.delitem(sys.modules, "torch._dynamo")
    _compat.assume_constant_result(marked)
    monkeypatch.undo()
    expected = torch.ones(2) * untraceable()
    f = torch.compile(lambda x: x * marked(), backend="eager", fullgraph=True)
    assert torch.equal(f(torch.ones(2)), expected)  # a constant in the graph
    unmarked = torch.compile(lambda x: x * untraceable(), backend="eager", fullgraph=True)
    with pytest.raises(Exception, match="graph_break|graph break"):  # fullgraph refuses it
        unmarked(torch.ones(2))
    torch._dynamo.reset()


def test_a_compiled_runner_loads_the_compiler_at_its_first_call():
    # torch.compile imports Dynamo (~1 s); building a runner must not, so that a cold
    # compile="auto" start that stays eager does without it.
    code = """
import sys, torch, functrain as ft
def step(state, x):
    return {"w": state["w"] + x.sum()}, {"n": ft.metrics.Sum.from_value(x.sum())}
runners = [ft.CompiledStep(step, compile=c) for c in ("inductor", "auto")]
assert 'torch._dynamo' not in sys.modules, 'built'
state, window = runners[0].run({"w": torch.zeros(())}, torch.ones(2), None)
assert 'torch._dynamo' in sys.modules, 'called'
assert float(state["w"]) == 2.0 and runners[0].compiles == 1
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=300, env={**os.environ, "FUNCTRAIN_STEP_CACHE": "0"})
    assert out.returncode == 0, out.stderr[-2000:]


def test_import_functrain_and_an_eager_run_do_not_load_the_compiler():
    # Dynamo's import takes ~1 s; an eager run without draws never needs it. (A draw does:
    # torch wraps a custom operator's kernel in torch._disable_dynamo, which imports it.)
    code = """
import sys, torch, functrain as ft
assert 'torch._dynamo' not in sys.modules, 'import'
model = torch.nn.Linear(3, 2)
state = ft.TrainState.create(model, ft.optim.adam(1e-2), seed=0)
def step(state, x):
    def loss_fn(params):
        return ft.call(model, params, state.buffers, x)[0].square().mean()
    loss, grads = ft.grad_and_value(loss_fn)(state.params)[::-1]
    return state.apply_gradients(grads), {"loss": ft.metrics.Mean.from_value(loss)}
ft.fit(step, state, [torch.ones(4, 3)] * 3, epochs=1, compile="eager",
       callbacks=[ft.Logging.quiet()])
assert 'torch._dynamo' not in sys.modules, 'eager fit'
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
