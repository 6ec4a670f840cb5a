"""The compiled-step runner: donation, compile counts, recompiles, host syncs, bad input."""

from __future__ import annotations

import warnings

import pytest
import torch
from conftest import count_host_syncs
from torch import nn

import functrain as ft


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 8, bias=False), nn.BatchNorm1d(8), nn.ReLU(),
                         nn.Linear(8, 3))


def _step(model):
    def step(state, batch):
        x, y = batch

        def loss_fn(params):
            out, nb = ft.call(model, params, state.buffers, x)
            return nn.functional.cross_entropy(out, y), (out, nb)

        grads, (loss, (out, nb)) = torch.func.grad_and_value(loss_fn, has_aux=True)(
            state.params)
        return state.apply_gradients(grads, buffers=nb), {
            "loss": loss, "acc": ft.metrics.Accuracy.from_logits(out, y)}

    return step


def _data(n=6, batch=16, last=None, seed=1):
    g = torch.Generator().manual_seed(seed)
    sizes = [batch] * n + ([last] if last else [])
    return [(torch.randn(b, 6, generator=g), torch.randint(0, 3, (b,), generator=g))
            for b in sizes]


def _leaves_close(a, b, **kw):
    for (p, x), y in zip(ft.tree.leaves_with_path(a, "state"), ft.tree.leaves(b)):
        torch.testing.assert_close(x, y, msg=p, **kw)


def test_inductor_equals_eager_and_compiles_once_per_shape():
    model = _model()
    data = _data(last=5)
    results = {}
    for backend in ("eager", "inductor"):
        run = ft.compile_step(_step(model), compile=backend)
        state = ft.TrainState.create(model, ft.optim.adamw(1e-2))
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # the partial last batch is not reported
            for _ in range(2):  # two epochs
                for b in data:
                    state, metrics = run(state, b)
        results[backend] = (state, run.read_metrics())
        if backend == "inductor":
            # one graph for the full batches, one more for the partial last batch, reused
            # in the second epoch
            assert run.compiles == 2
            assert len(run.recompiles) == 1 and "(16, 6) -> (5, 6)" in run.recompiles[0][1]
    assert int(results["inductor"][0].step) == 14
    _leaves_close(results["eager"][0], results["inductor"][0], rtol=1e-4, atol=1e-5)
    for k in ("loss", "acc"):
        assert results["eager"][1][k] == pytest.approx(results["inductor"][1][k], rel=1e-4)


def test_donated_state_raises_and_donate_false_keeps_it():
    model = _model()
    run = ft.compile_step(_step(model), compile="eager")
    s0 = ft.TrainState.create(model, ft.optim.sgd(0.1))
    s1, _ = run(s0, _data(1)[0])
    with pytest.raises(ft.DonatedStateError, match=r"state\.params: .*donated.*HINT"):
        s0.params  # noqa: B018
    with pytest.raises(ft.DonatedStateError):
        run(s0, _data(1)[0])
    run2 = ft.compile_step(_step(model), compile="eager", donate=False)
    t0 = ft.TrainState.create(model, ft.optim.sgd(0.1))
    t1, _ = run2(t0, _data(1)[0])
    assert int(t0.step) == 0 and int(t1.step) == 1


def _forked_state_class():
    """A user's fork of TrainState: its pattern copied, registered as a pytree by hand."""
    import dataclasses

    import optree

    @dataclasses.dataclass(frozen=True, eq=False)
    class MyState:
        step: torch.Tensor
        params: dict
        opt_state: object
        tx: object = dataclasses.field(default=None, metadata={"static": True})

        def apply_gradients(self, grads):
            updates, opt_state = self.tx.update(grads, self.opt_state, self.params)
            return dataclasses.replace(self, step=self.step + 1, opt_state=opt_state,
                                       params=ft.optim.apply_updates(self.params, updates))

    names = ("step", "params", "opt_state")
    optree.register_pytree_node(
        MyState, lambda s: ([getattr(s, n) for n in names], s.tx, names),
        lambda tx, children: MyState(*children, tx=tx),
        path_entry_type=optree.GetAttrEntry, namespace=ft.tree.NAMESPACE)
    return MyState


def test_precision_policies_treat_a_forked_state_class_like_train_state():
    MyState = _forked_state_class()  # noqa: N806
    tx = ft.optim.adam(1e-2)
    params = {"w": torch.zeros(3, 2)}
    state = MyState(torch.zeros((), dtype=torch.int64), params, tx.init(params), tx)
    cast = ft.precision.Policy.from_name("bf16-true").cast_state(state)
    assert type(cast) is MyState
    assert cast.params["w"].dtype == torch.bfloat16
    assert cast.opt_state[0].mu["w"].dtype == torch.bfloat16  # through tx.init, as TrainState
    assert cast.step.dtype == torch.int64
    with pytest.raises(TypeError, match=r"expected a functrain.TrainState.*HINT: .*extras dict"):
        ft.precision.Policy.from_name("16-mixed").prepare_state(state)


@pytest.mark.parametrize("backend", ["eager", "inductor"])
def test_a_forked_state_class_is_donated_like_train_state(backend):
    model = nn.Linear(6, 3)
    MyState = _forked_state_class()  # noqa: N806

    def step(state, batch):
        x, y = batch

        def loss_fn(params):
            out, _ = ft.call(model, params, {}, x)
            return nn.functional.cross_entropy(out, y)

        grads, loss = torch.func.grad_and_value(loss_fn)(state.params)
        return state.apply_gradients(grads), {"loss": loss}

    tx = ft.optim.adam(1e-2)
    params = {k: v.detach().clone() for k, v in model.named_parameters()}
    s0 = MyState(torch.zeros((), dtype=torch.int64), params, tx.init(params), tx)
    run = ft.compile_step(step, compile=backend)
    s1, _ = run(s0, _data(1)[0])
    s2, _ = run(s1, _data(1)[0])  # the compiled step wrote into the fork's tensors
    assert type(s2) is MyState and int(s2.step) == 2
    for old in (s0, s1):
        with pytest.raises(ft.DonatedStateError, match=r"state\.params: .*donated.*HINT"):
            old.params  # noqa: B018
        with pytest.raises(ft.DonatedStateError):
            run(old, _data(1)[0])
    assert "donated MyState" in repr(s0)


def test_compiled_step_updates_state_in_place():
    # (on the CPU through Inductor's C++ wrapper: `_backend.CPU_OPTIONS`)
    from torch._inductor.utils import run_and_get_code

    model = _model()
    run = ft.compile_step(_step(model), compile="inductor")
    state = ft.TrainState.create(model, ft.optim.adamw(1e-2))
    (state, _), codes = run_and_get_code(run, state, _data(1)[0])
    assert len(codes) == 1 and "inductor_entry_impl" in codes[0]
    ptrs = [x.data_ptr() for x in ft.tree.leaves(state)]
    for b in _data(3):
        state, _ = run(state, b)
    assert [x.data_ptr() for x in ft.tree.leaves(state)] == ptrs
    assert int(state.step) == 4


def test_shape_change_warns_with_reason_or_raises():
    model = _model()
    run = ft.compile_step(_step(model), compile="inductor")
    state = ft.TrainState.create(model, ft.optim.sgd(0.1))
    state, _ = run(state, _data(1, batch=8)[0])
    with pytest.warns(UserWarning, match=r"recompiled .*batch\[0\]: \(8, 6\) -> \(12, 6\)"):
        state, _ = run(state, _data(1, batch=12)[0])
    strict = ft.compile_step(_step(model), compile="inductor", on_recompile="raise")
    state = ft.TrainState.create(model, ft.optim.sgd(0.1))
    state, _ = strict(state, _data(1, batch=8)[0])
    with pytest.raises(ft.RecompileError, match=r"batch\[1\]: \(8,\) -> \(12,\).*HINT"):
        strict(state, _data(1, batch=12)[0])


def test_no_recompile_when_learning_rate_or_step_changes():
    model = _model()
    tx = ft.optim.inject_hyperparams(ft.optim.sgd)(learning_rate=0.1)
    run = ft.compile_step(_step(model), compile="inductor", on_recompile="raise")
    state = ft.TrainState.create(model, tx)
    for i, b in enumerate(_data(4)):
        hp = dict(state.opt_state.hyperparams)
        hp["learning_rate"] = torch.tensor(0.1 / (i + 1))
        state = state.replace(opt_state=state.opt_state._replace(hyperparams=hp))
        state, _ = run(state, b)
    assert run.compiles == 1 and int(state.step) == 4


def test_one_host_sync_per_metric_read():
    model = _model()
    run = ft.compile_step(_step(model), compile="inductor")
    state = ft.TrainState.create(model, ft.optim.adamw(1e-3))
    data = _data(10)
    state, _ = run(state, data[0])  # compile outside the counted region
    run.read_metrics()
    with count_host_syncs() as counts:
        for _ in range(3):
            for b in data:
                state, _ = run(state, b)
            values = run.read_metrics()
    assert counts == {**dict.fromkeys(counts, 0), "tolist": 3}, counts
    assert set(values) == {"loss", "acc"}


# -- bad input: each fails before the first step, naming the leaf or argument -----------------

def _check_fails_first(step_fn, batch, exc, match):
    model = _model()
    for backend in ("eager", "inductor"):
        run = ft.compile_step(step_fn(model), compile=backend)
        state = ft.TrainState.create(model, ft.optim.sgd(0.1))
        with pytest.raises(exc, match=match):
            run(state, batch)
        assert run.calls == 0 and run.compiles == 0  # nothing ran
        assert int(state.step) == 0  # and the state was not consumed


def test_step_returning_wrong_structure():
    def bad(model):
        return lambda state, batch: state
    _check_fails_first(bad, _data(1)[0], TypeError, r"must return a pair \(state, metrics\)")


def test_step_changing_state_tree_or_dtype():
    def drops_buffers(model):
        def step(state, batch):
            return state.replace(buffers={}), {}
        return step

    _check_fails_first(drops_buffers, _data(1)[0], ft.tree.TreeMismatchError,
                       r"step_fn\(state, batch\)\[0\]\.buffers: expected keys")

    def changes_dtype(model):
        def step(state, batch):
            p = dict(state.params)
            p["0.weight"] = p["0.weight"].double()
            return state.replace(params=p), {}
        return step

    _check_fails_first(changes_dtype, _data(1)[0], ft.tree.TreeMismatchError,
                       r"\.params\['0\.weight'\]: expected dtype torch.float32, got torch.float64")


def test_step_returning_bad_metrics():
    def vector_metric(model):
        return lambda state, batch: (state, {"loss": batch[0].sum(1)})
    _check_fails_first(vector_metric, _data(1)[0], TypeError,
                       r"metrics\['loss'\]: expected a 0-d tensor.*shape \(16,\)")

    def float_metric(model):
        return lambda state, batch: (state, {"loss": 1.0})
    _check_fails_first(float_metric, _data(1)[0], TypeError, r"metrics\['loss'\]")


def test_batch_of_non_tensors():
    _check_fails_first(_step, ("not", "tensors"), TypeError,
                       r"batch\[0\]: expected a tensor, got str")


def test_state_with_python_number_leaf():
    model = _model()
    run = ft.compile_step(_step(model), compile="eager")
    state = ft.TrainState.create(model, ft.optim.sgd(0.1), epoch=3)
    with pytest.raises(TypeError, match=r"state\.extras\['epoch'\]: expected a tensor, got int"):
        run(state, _data(1)[0])


def test_bad_arguments():
    with pytest.raises(TypeError, match="step_fn: expected a callable"):
        ft.compile_step(None)
    with pytest.raises(ValueError, match="compile: expected one of"):
        ft.compile_step(lambda s, b: (s, {}), compile="tvm")
    with pytest.raises(ValueError, match="on_recompile: expected"):
        ft.compile_step(lambda s, b: (s, {}), on_recompile="maybe")
    with pytest.raises(ValueError, match="cudagraphs.*needs a CUDA device"):
        ft.compile_step(lambda s, b: (s, {}), compile="cudagraphs", device="cpu")


def test_registering_new_pytree_classes_later_does_not_recompile():
    """Field names of tree nodes live on their classes, not in a guarded global registry."""
    import dataclasses

    model = _model()
    run = ft.compile_step(_step(model), compile="inductor", on_recompile="raise")
    state = ft.TrainState.create(model, ft.optim.sgd(0.1))
    data = _data(4)
    state, _ = run(state, data[0])

    @dataclasses.dataclass(frozen=True, eq=False)
    class Max(ft.metrics.Metric):  # a new node type, flattened after the first compile
        value: torch.Tensor

    @dataclasses.dataclass(frozen=True, eq=False)
    class Other(ft.TrainState):
        extra_field: dict = dataclasses.field(default_factory=dict)

    ft.tree.leaves(Max(torch.ones(())))
    ft.tree.leaves(Other.create(model, ft.optim.sgd(0.1)))
    for b in data[1:]:
        state, _ = run(state, b)
    assert run.compiles == 1 and int(state.step) == 4
