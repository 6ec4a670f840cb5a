"""The model bridge (split, call) and TrainState."""

from __future__ import annotations

import copy
import dataclasses
import warnings

import pytest
import torch
from torch import nn

import functrain as ft


def _cnn_bn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, 3))


def test_split_returns_detached_copies():
    model = _cnn_bn()
    before = copy.deepcopy(model.state_dict())
    params, buffers = ft.split_module(model)
    assert sorted(params) == ["0.bias", "0.weight", "1.bias", "1.weight", "3.bias", "3.weight"]
    assert sorted(buffers) == ["1.num_batches_tracked", "1.running_mean", "1.running_var"]
    for v in params.values():
        assert not v.requires_grad
        v.add_(1.0)  # changing the copies never changes the module
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_split_rejects_non_module():
    with pytest.raises(TypeError,
                       match="module: expected a torch.nn.Module, got an object of type dict"):
        ft.split_module({"w": torch.ones(1)})


def test_call_is_pure_and_matches_module_forward():
    model = _cnn_bn()
    params, buffers = ft.split_module(model)
    saved = {k: v.clone() for k, v in buffers.items()}
    x = torch.randn(8, 5)
    out, new_buffers = ft.call(model, params, buffers, x)
    for k in buffers:  # the dicts passed in are untouched
        assert torch.equal(buffers[k], saved[k]), k
    ref = copy.deepcopy(model)
    ref_out = ref(x)  # the module's own impure forward, for reference
    torch.testing.assert_close(out, ref_out)
    for k, v in ref.named_buffers():
        torch.testing.assert_close(new_buffers[k], v)
    assert int(new_buffers["1.num_batches_tracked"]) == 1
    # the module that call() ran is untouched too
    for k, v in model.named_buffers():
        assert torch.equal(v, saved[k]), k


def test_call_train_false_uses_running_stats_and_keeps_buffers():
    model = _cnn_bn()
    params, buffers = ft.split_module(model)
    buffers["1.running_mean"] = torch.full((6,), 0.5)
    x = torch.randn(4, 5)
    out, new_buffers = ft.call(model, params, buffers, x, train=False)
    assert model.training  # mode restored
    assert torch.equal(new_buffers["1.running_mean"], buffers["1.running_mean"])
    ref = copy.deepcopy(model).eval()
    ref.get_submodule("1").running_mean.fill_(0.5)
    torch.testing.assert_close(out, ref(x))


def test_call_gradients_equal_autograd():
    model = _cnn_bn()
    params, buffers = ft.split_module(model)
    x, y = torch.randn(8, 5), torch.randint(0, 3, (8,))

    def loss_fn(p):
        out, _ = ft.call(model, p, buffers, x)
        return nn.functional.cross_entropy(out, y)

    grads = torch.func.grad(loss_fn)(params)
    ref = copy.deepcopy(model)
    nn.functional.cross_entropy(ref(x), y).backward()
    for k, p in ref.named_parameters():
        torch.testing.assert_close(grads[k], p.grad, msg=k)


def test_call_under_vmap_gives_per_example_outputs():
    torch.manual_seed(0)
    model = nn.Linear(4, 2)
    params, buffers = ft.split_module(model)
    x = torch.randn(6, 4)
    per_example = torch.func.vmap(lambda xi: ft.call(model, params, buffers, xi)[0])(x)
    torch.testing.assert_close(per_example, model(x))


def test_call_compiles_as_one_graph(compile_counter):
    model = _cnn_bn()
    params, buffers = ft.split_module(model)

    def step(p, b, x, y):
        def loss_fn(p):
            out, nb = ft.call(model, p, b, x)
            return nn.functional.cross_entropy(out, y), nb

        g, (loss, nb) = torch.func.grad_and_value(loss_fn, has_aux=True)(p)
        return g, loss, nb

    compiled = torch.compile(step, backend=compile_counter, fullgraph=True)
    x, y = torch.randn(8, 5), torch.randint(0, 3, (8,))
    for _ in range(3):
        g, loss, nb = compiled(params, buffers, x, y)
    g_ref, loss_ref, nb_ref = step(params, buffers, x, y)
    assert compile_counter.count == 1
    torch.testing.assert_close(loss, loss_ref)
    torch.testing.assert_close(nb["1.running_var"], nb_ref["1.running_var"])


def test_call_names_missing_keys():
    model = _cnn_bn()
    params, buffers = ft.split_module(model)
    del params["0.weight"]
    with pytest.raises(KeyError, match=r"0\.weight.*HINT: build them with functrain.split"):
        ft.call(model, params, buffers, torch.randn(2, 5))
    with pytest.raises(TypeError,
                       match="params: expected a dict of tensors, got an object of type list"):
        ft.call(model, [1], buffers, torch.randn(2, 5))


# -- TrainState ---------------------------------------------------------------------------

def test_create_fields_and_tree_paths():
    model = _cnn_bn()
    state = ft.TrainState.create(model, ft.optim.sgd(0.1), seed=3)
    assert state.step.dtype == torch.int64 and state.step.shape == ()
    assert state.rng.shape == (2,) and state.rng.dtype == torch.int64
    assert torch.equal(state.rng, ft.random.key(3))
    assert state.tx is not None and state.module is model
    paths = [p for p, _ in ft.tree.leaves_with_path(state, "state")]
    assert "state.step" in paths and "state.params['0.weight']" in paths
    assert "state.buffers['1.running_mean']" in paths
    # static fields are metadata, not leaves
    assert len(ft.tree.leaves(state)) == len(paths)
    rebuilt = ft.tree.map(lambda x: x, state)
    assert isinstance(rebuilt, ft.TrainState) and rebuilt.tx is state.tx


def test_state_is_immutable_and_replace_copies():
    state = ft.TrainState.create(nn.Linear(2, 2), ft.optim.sgd(0.1))
    with pytest.raises(dataclasses.FrozenInstanceError):
        state.step = torch.tensor(1)
    s2 = state.replace(step=state.step + 4)
    assert int(s2.step) == 4 and int(state.step) == 0
    assert s2.params is state.params


def test_apply_gradients_runs_optimizer_and_counts():
    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    state = ft.TrainState.create(model, ft.optim.sgd(0.5))
    grads = ft.tree.map(torch.ones_like, state.params)
    new_buffers = {}
    s2 = state.apply_gradients(grads, buffers=new_buffers)
    assert int(s2.step) == 1 and s2.buffers is new_buffers
    for k in state.params:
        torch.testing.assert_close(s2.params[k], state.params[k] - 0.5)
        assert s2.params[k].dtype == state.params[k].dtype


def test_apply_gradients_names_bad_leaf():
    state = ft.TrainState.create(nn.Linear(3, 2), ft.optim.sgd(0.1))
    grads = ft.tree.map(torch.zeros_like, state.params)
    grads["weight"] = torch.zeros(3, 2)
    with pytest.raises(ft.tree.TreeMismatchError,
                       match=r"grads\['weight'\]: expected shape \(2, 3\), got \(3, 2\)"):
        state.apply_gradients(grads)
    del grads["weight"]
    with pytest.raises(ft.tree.TreeMismatchError, match=r"grads: .*missing \['weight'\]"):
        state.apply_gradients(grads)


def test_apply_gradients_rejects_mismatched_opt_state():
    state = ft.TrainState.create(nn.Linear(3, 2), ft.optim.adam(0.1))
    other = ft.TrainState.create(nn.Linear(4, 2), ft.optim.adam(0.1))
    bad = state.replace(opt_state=other.opt_state)
    grads = ft.tree.map(torch.zeros_like, state.params)
    with pytest.raises(ft.tree.TreeMismatchError,
                       match=r"state\.opt_state.*expected shape \(2, 3\), got \(2, 4\).*HINT"):
        bad.apply_gradients(grads)


def test_create_rejects_non_optimizer():
    with pytest.raises(TypeError, match="optimizer: expected a functrain.optim"):
        ft.TrainState.create(nn.Linear(2, 2), torch.optim.SGD)


def test_subclass_with_extra_field_is_a_pytree():
    @dataclasses.dataclass(frozen=True, eq=False)
    class EMAState(ft.TrainState):
        ema: dict = dataclasses.field(default_factory=dict)

    model = nn.Linear(2, 2)
    s = EMAState.create(model, ft.optim.sgd(0.1), ema=ft.split_module(model)[0],
                        note=torch.ones(()))
    paths = [p for p, _ in ft.tree.leaves_with_path(s, "s")]
    assert "s.ema['weight']" in paths and "s.extras['note']" in paths
    doubled = ft.tree.map(lambda x: x * 2, s)
    assert isinstance(doubled, EMAState)
    torch.testing.assert_close(doubled.ema["bias"], 2 * s.ema["bias"])


def test_split_is_a_deprecated_alias_of_split_module():
    model = torch.nn.BatchNorm1d(3)
    with pytest.warns(DeprecationWarning, match=r"functrain\.split is deprecated.*split_module"):
        params, buffers = ft.split(model)
    want_params, want_buffers = ft.split_module(model)
    assert params.keys() == want_params.keys() and buffers.keys() == want_buffers.keys()
    for k in want_params:
        assert torch.equal(params[k], want_params[k])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the new name does not warn
        ft.split_module(model)


# -- the eager fast path of `call` (a cached plan instead of functional_call) --------------------


class _Tied(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Linear(4, 4, bias=False)
        self.block = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4))
        self.again = self.block  # a shared submodule: two names for the same tensors
        self.head = nn.Linear(4, 4, bias=False)
        self.head.weight = self.emb.weight  # tied

    def forward(self, x):
        return self.head(self.again(self.block(self.emb(x))))


def _reference(model, params, buffers, x):
    # On a copy: functional_call itself leaves a shared submodule holding the tensors it was
    # given (it restores the second name of a slot to what the first name swapped in).
    new_buffers = {k: v.clone() for k, v in buffers.items()}
    out = torch.func.functional_call(copy.deepcopy(model), (params, new_buffers), (x,),
                                     strict=True)
    return out, new_buffers


def _same_call(model, params, buffers, x):
    out, nb = ft.call(model, params, buffers, x)
    ref, ref_nb = _reference(model, params, buffers, x)
    torch.testing.assert_close(out, ref, rtol=0, atol=0)
    assert list(nb) == list(ref_nb)
    for k in nb:
        torch.testing.assert_close(nb[k], ref_nb[k], rtol=0, atol=0)


def test_call_fast_path_equals_functional_call_with_ties_shared_modules_and_buffers():
    torch.manual_seed(0)
    model = _Tied()
    params, buffers = ft.split_module(model)
    assert "head.weight" not in params and "again.0.weight" not in params
    own = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(6, 4)
    for _ in range(2):  # the plan is built, then reused
        _same_call(model, ft.tree.map(lambda p: p * 2, params), buffers, x)
    for k, v in model.state_dict().items():  # the module's own tensors are back
        assert torch.equal(v, own[k])
    # gradients through the fast path equal torch.func's
    def loss_fn(p):
        return ft.call(model, p, buffers, x)[0].square().sum()
    got = ft.grad_and_value(loss_fn)(params)[0]
    ref = torch.func.grad(lambda p: torch.func.functional_call(
        model, (p, {k: v.clone() for k, v in buffers.items()}), (x,)).square().sum())(params)
    for k in params:
        torch.testing.assert_close(got[k], ref[k])


def test_call_fast_path_follows_changes_to_the_module():
    torch.manual_seed(0)
    model = _Tied()
    x = torch.randn(6, 4)
    params, buffers = ft.split_module(model)
    ft.call(model, params, buffers, x)  # plan cached
    model.block[0] = nn.Linear(4, 4)  # a replaced submodule (its old tensors gone)
    params, buffers = ft.split_module(model)
    _same_call(model, params, buffers, x)
    model.head.weight = nn.Parameter(torch.ones(4, 4))  # untied
    params, buffers = ft.split_module(model)
    assert "head.weight" in params
    _same_call(model, params, buffers, x)
    model.block[0].register_buffer("extra", torch.zeros(()))  # an added buffer
    with pytest.raises(KeyError, match=r"block\.0\.extra.*HINT: build them with "
                                       r"functrain\.split_module"):
        ft.call(model, params, buffers, x)  # the dicts from before lack it
    params, buffers = ft.split_module(model)
    _same_call(model, params, buffers, x)
    with pytest.raises(KeyError, match="Unexpected"):
        ft.call(model, {**params, "nope": torch.zeros(1)}, buffers, x)


def test_call_fast_path_puts_the_modules_tensors_back_when_forward_raises():
    model = nn.Linear(3, 2)
    params, buffers = ft.split_module(model)
    weight = model.weight
    with pytest.raises(RuntimeError):
        ft.call(model, params, buffers, torch.ones(4, 5))  # wrong input width
    assert model.weight is weight and model._parameters["bias"] is not params["bias"]


def test_call_fast_path_does_not_keep_the_module_alive():
    import gc
    import weakref

    model = _Tied()
    params, buffers = ft.split_module(model)
    ft.call(model, params, buffers, torch.randn(6, 4))
    ref = weakref.ref(model)
    del model
    gc.collect()
    assert ref() is None
