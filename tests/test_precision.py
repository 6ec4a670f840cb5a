"""functrain.precision: policies, GradScaler parity, skipped steps, fp16/bf16 training, compiles."""

from __future__ import annotations

import copy
import math

import optree
import pytest
import torch
from torch import nn

import functrain as ft
from functrain import precision as mp

INF, NAN = float("inf"), float("nan")


def _mlp(n_in=4, hidden=16, n_out=1, seed=0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(n_in, hidden), nn.ReLU(), nn.Linear(hidden, n_out))


def _mp_step(model):
    """The documented step: value_and_grad + apply_gradients, for every policy."""

    def step(state, batch):
        x, y = batch

        def loss_fn(params):
            out, _ = ft.call(model, params, state.buffers, x)
            return ((out.float() - y.float()) ** 2).mean()

        loss, grads = mp.value_and_grad(loss_fn)(state.params,
                                                 loss_scale=mp.get_loss_scale(state))
        state = mp.apply_gradients(state, grads)
        return state, {"loss": loss}

    return step


def _regression(n=64, n_in=4, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, n_in, generator=g)
    w = torch.randn(n_in, 1, generator=g)
    return x, torch.tanh(x @ w)


def _ls(state):
    return mp.get_loss_scale(state)


# -- policies -----------------------------------------------------------------------------------

@pytest.mark.parametrize("name, dtypes", [
    ("32", (None, None, None)),
    ("32-true", (None, None, None)),
    ("bf16-mixed", (torch.float32, torch.bfloat16, torch.float32)),
    ("bf16", (torch.float32, torch.bfloat16, torch.float32)),
    ("16-mixed", (torch.float32, torch.float16, torch.float32)),
    ("16", (torch.float32, torch.float16, torch.float32)),
    ("bf16-true", (torch.bfloat16, torch.bfloat16, torch.float32)),
])
def test_policy_names_and_aliases(name, dtypes):
    p = mp.Policy.from_name(name)
    assert (p.param_dtype, p.compute_dtype, p.output_dtype) == dtypes
    assert p.needs_loss_scale == (dtypes[1] == torch.float16)
    assert p.uses_autocast == name.startswith(("bf16-mixed", "16")) or name == "bf16"


@pytest.mark.parametrize("bad", ["fp16", "bf16-true ", "64", "mixed", 16, None])
def test_policy_name_errors_list_the_options(bad):
    with pytest.raises(ValueError, match=r"precision: expected one of '32', 'bf16-mixed', "
                       r"'16-mixed', 'bf16-true', '32-true', 'bf16', '16', got") as e:
        mp.Policy.from_name(bad)
    assert repr(bad) in str(e.value)


def test_policy_rejects_non_float_dtypes():
    with pytest.raises(TypeError, match=r"compute_dtype: expected None or one of .*got torch.int8"):
        mp.Policy(torch.float32, torch.int8, torch.float32)


def test_autocast_contexts():
    x = torch.ones(2, 3)
    for name, dtype in [("bf16-mixed", torch.bfloat16), ("16-mixed", torch.float16),
                        ("bf16-true", torch.float32), ("32", torch.float32)]:
        with mp.Policy.from_name(name).autocast(torch.device("cpu")):
            assert (x @ x.T).dtype == dtype, name


def test_cast_state_copies_nothing_it_need_not():
    state = ft.TrainState.create(_mlp().double(), ft.optim.adam(1e-3))
    assert mp.Policy.from_name("32").cast_state(state) is state  # float64 stays float64
    assert mp.Policy.from_name("32").prepare_state(state) is state
    state = ft.TrainState.create(_mlp(), ft.optim.adam(1e-3))
    assert mp.Policy.from_name("bf16-mixed").prepare_state(state) is state
    prepared = mp.Policy.from_name("16-mixed").prepare_state(state)
    assert mp.Policy.from_name("16-mixed").prepare_state(prepared) is prepared
    assert all(prepared.params[k] is v for k, v in state.params.items())
    # bf16 params -> float32 master params, and the Adam moments with them.
    back = mp.Policy.from_name("bf16-mixed").cast_state(
        mp.Policy.from_name("bf16-true").cast_state(state))
    assert {x.dtype for x in ft.tree.leaves((back.params, back.opt_state[0].mu))} == {
        torch.float32}


def test_cast_state_of_other_pytrees_and_errors():
    tree = {"w": torch.ones(1), "n": torch.tensor(3)}
    cast = mp.Policy.from_name("bf16-true").cast_state(tree)
    assert (cast["w"].dtype, cast["n"].dtype) == (torch.bfloat16, torch.int64)
    assert mp.Policy.from_name("bf16-mixed").cast_state(tree) is tree
    with pytest.raises(TypeError,
                       match="state: expected a functrain.TrainState, got an object of type dict"):
        mp.Policy.from_name("16-mixed").prepare_state(tree)
    state = ft.TrainState.create(_mlp(), ft.optim.adam(1e-3))
    state = state.replace(opt_state=ft.optim.sgd(0.1, momentum=0.9).init(state.params))
    with pytest.raises(ft.tree.TreeMismatchError, match=r"state\.opt_state"):
        mp.Policy.from_name("bf16-true").cast_state(state)


# -- autocast inside a compiled step --------------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_autocast_inside_fullgraph_compile_around_grad_of_functional_call(dtype,
                                                                          compile_counter):
    model = _mlp()
    params, _ = ft.split_module(model)
    x, y = _regression()

    def grads_of(params, x, y):
        def loss_fn(params):
            out = torch.func.functional_call(model, params, (x,))
            return ((out.float() - y) ** 2).mean(), out

        with torch.autocast("cpu", dtype=dtype):
            return torch.func.grad_and_value(loss_fn, has_aux=True)(params)

    compiled = torch.compile(grads_of, backend=compile_counter, fullgraph=True)
    for _ in range(3):
        grads, (loss, out) = compiled(params, x, y)
    assert compile_counter.count == 1
    assert out.dtype == dtype and loss.dtype == torch.float32
    assert all(g.dtype == torch.float32 for g in grads.values())
    # The same numbers as autocast + plain autograd.
    ref = {k: v.clone().requires_grad_() for k, v in params.items()}
    with torch.autocast("cpu", dtype=dtype):
        ref_loss = ((torch.func.functional_call(model, ref, (x,)).float() - y) ** 2).mean()
    ref_loss.backward()
    for k in params:
        torch.testing.assert_close(grads[k], ref[k].grad)


# -- DynamicLossScale vs torch.amp.GradScaler -----------------------------------------------------

# step index -> multiplier of the loss (inf / nan make every gradient non-finite)
INJECT = {2: INF, 5: NAN, 6: INF, 7: INF, 11: NAN, 16: INF, 23: INF, 24: NAN}


@pytest.mark.parametrize("hp", [
    dict(),  # GradScaler's defaults
    dict(init_scale=2.0**16, growth_factor=2.0, backoff_factor=0.5, growth_interval=3),
    dict(init_scale=3.0, growth_factor=1.1, backoff_factor=0.3, growth_interval=2),
    dict(init_scale=2.0**126, growth_factor=2.0, backoff_factor=0.5, growth_interval=1),
])
def test_scale_trajectory_and_skips_equal_gradscaler(hp):
    model = _mlp(3, 5, 2).double()
    ref_model = copy.deepcopy(model)
    ref_opt = torch.optim.SGD(ref_model.parameters(), lr=0.05, momentum=0.9)
    scaler = torch.amp.GradScaler("cpu", **hp)
    state = ft.TrainState.create(model, ft.optim.sgd(0.05, momentum=0.9),
                                 loss_scale=mp.DynamicLossScale(**hp))
    g = torch.Generator().manual_seed(0)
    ref_skipped = 0
    for i in range(30):
        x = torch.randn(8, 3, generator=g, dtype=torch.float64)
        mult = INJECT.get(i, 1.0)

        loss = (ref_model(x) ** 2).mean() * mult
        scaler.scale(loss).backward()
        scaler.step(ref_opt)
        found = scaler._per_optimizer_states[id(ref_opt)]["found_inf_per_device"]
        ref_skipped += int(sum(v.item() for v in found.values()) > 0)
        scaler.update()
        ref_opt.zero_grad()

        def loss_fn(params, x=x, mult=mult, buffers=state.buffers):
            out, _ = ft.call(model, params, buffers, x)
            return (out ** 2).mean() * mult

        _, grads = mp.value_and_grad(loss_fn)(state.params, loss_scale=_ls(state))
        state = mp.apply_gradients(state, grads)

        ls = _ls(state)
        assert ls.loss_scale.dtype == torch.float32
        assert ls.loss_scale.item() == scaler.get_scale(), f"step {i}"
        assert ls.growth_tracker.item() == scaler._growth_tracker.item(), f"step {i}"
        assert ls.skipped_steps.item() == ref_skipped, f"step {i}"
        for name, p in ref_model.named_parameters():
            torch.testing.assert_close(state.params[name], p.detach(), rtol=1e-12, atol=1e-12)
    assert ref_skipped == len(INJECT) and int(state.step) == 30
    if hp.get("growth_interval") == 1:  # grew to 2**127, then held: 2**128 overflows float32
        assert scaler.get_scale() <= 2.0**127


def test_skipped_step_leaves_params_and_opt_state_bit_identical():
    model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Linear(8, 1))
    tx = ft.optim.chain(ft.optim.clip_by_global_norm(1.0),
                        ft.optim.inject_hyperparams(ft.optim.adamw)(learning_rate=1e-2))
    state = ft.TrainState.create(model, tx, loss_scale=mp.DynamicLossScale(init_scale=2.0**8))
    x, y = _regression(16)

    def step(state, mult):
        def loss_fn(params):
            out, nb = ft.call(model, params, state.buffers, x, train=True)
            return ((out - y) ** 2).mean() * mult, nb

        (_, nb), grads = mp.value_and_grad(loss_fn, has_aux=True)(state.params,
                                                                  loss_scale=_ls(state))
        return mp.apply_gradients(state, grads, buffers=nb)

    for _ in range(3):  # some optimizer history (Adam moments, counts)
        state = step(state, 1.0)
    before = ft.tree.map(torch.clone, (state.params, state.opt_state))
    new = step(state, NAN)
    for (path, a), b in zip(ft.tree.leaves_with_path(before, "(params, opt_state)"),
                            ft.tree.leaves((new.params, new.opt_state))):
        assert a.dtype == b.dtype and torch.equal(a, b), path
    assert int(new.step) == 4  # state.step counts steps taken, skipped ones included
    assert _ls(new).skipped_steps.item() == 1 and _ls(new).loss_scale.item() == 2.0**7
    assert not torch.equal(new.buffers["1.running_mean"], state.buffers["1.running_mean"])
    after = step(new, 1.0)  # and it trains on from there
    assert not torch.equal(after.params["0.weight"], new.params["0.weight"])


def test_no_op_loss_scale_is_plain_apply_gradients():
    model = _mlp()
    state = ft.TrainState.create(model, ft.optim.adam(1e-2))
    x, y = _regression()

    def loss_fn(params):
        out, _ = ft.call(model, params, state.buffers, x)
        return ((out - y) ** 2).mean()

    loss, grads = mp.value_and_grad(loss_fn)(state.params, loss_scale=_ls(state))
    ref_grads, ref_loss = torch.func.grad_and_value(loss_fn)(state.params)
    assert torch.equal(loss, ref_loss)
    assert all(torch.equal(grads[k], ref_grads[k]) for k in grads)
    a, b = mp.apply_gradients(state, grads), state.apply_gradients(ref_grads)
    assert "loss_scale" not in a.extras
    assert all(torch.equal(a.params[k], b.params[k]) for k in a.params)
    nan = ft.tree.map(lambda g: g * NAN, grads)  # no loss scale: nothing is skipped
    assert torch.isnan(mp.apply_gradients(state, nan).params["0.weight"]).all()


def test_value_and_grad_scales_and_unscales_exactly():
    def loss_fn(params, x, *, k=1.0):
        return (params["w"] * x).sum() * k, params["w"].sum()

    params, x = {"w": torch.tensor([1.0, -2.0])}, torch.tensor([3.0, 0.25])
    ls = mp.DynamicLossScale(init_scale=2.0**20)
    (loss, aux), grads = mp.value_and_grad(loss_fn, has_aux=True)(params, x, k=2.0,
                                                                  loss_scale=ls)
    assert loss.item() == 5.0 and aux.item() == -1.0
    assert torch.equal(grads["w"], torch.tensor([6.0, 0.5]))
    (_, _), (gp, gx) = mp.value_and_grad(loss_fn, argnums=(0, 1), has_aux=True)(
        params, x, loss_scale=ls)
    assert torch.equal(gx, torch.tensor([1.0, -2.0])) and torch.equal(gp["w"], x)
    with pytest.raises(TypeError, match="loss_scale: expected a DynamicLossScale"):
        mp.value_and_grad(loss_fn)(params, x, loss_scale=2.0)
    # float16 grads are unscaled in float32: 1/2**30 is 0 in float16, the result is not.
    g16 = torch.tensor([2.0**10], dtype=torch.float16)
    g16 = mp.DynamicLossScale(init_scale=2.0**30).unscale(g16)
    assert g16.dtype == torch.float16 and g16.item() == 2.0**-20


# -- training under each policy ------------------------------------------------------------------

def test_fp16_huge_initial_scale_backs_off_then_trains():
    model = _mlp(4, 32, 1)
    policy = mp.Policy.from_name("16-mixed")
    state = policy.prepare_state(ft.TrainState.create(model, ft.optim.adam(1e-2)),
                                 loss_scale=mp.DynamicLossScale(init_scale=2.0**40,
                                                                growth_interval=50))
    step = policy.wrap_step(_mp_step(model), "cpu")
    batch = _regression()
    losses, scales = [], []
    for _ in range(100):
        state, metrics = step(state, batch)
        losses.append(metrics["loss"].item())
        scales.append(_ls(state).loss_scale.item())
    skipped = _ls(state).skipped_steps.item()
    assert 10 <= skipped < 40  # backed off from 2**40 to where float16 grads fit
    assert losses[:skipped + 1] == [losses[0]] * (skipped + 1)  # no update while skipping
    assert scales[0] == 2.0**39 and max(scales[skipped:]) < 2.0**30
    assert state.params["0.weight"].dtype == torch.float32
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < 0.2 * losses[0]


def test_bf16_true_keeps_params_and_moments_in_bf16():
    model = _mlp()
    policy = mp.Policy.from_name("bf16-true")
    state = policy.prepare_state(ft.TrainState.create(model, ft.optim.adamw(1e-2)))
    assert "loss_scale" not in state.extras
    assert all(p.dtype == torch.bfloat16 for p in state.params.values())
    adam = state.opt_state[0]
    assert adam.count.dtype == torch.int64
    assert all(m.dtype == torch.bfloat16 for m in [*adam.mu.values(), *adam.nu.values()])
    dtypes = [x.dtype for x in ft.tree.leaves(state)]
    step = policy.wrap_step(_mp_step(model), "cpu")
    batch = _regression()
    first = None
    for _ in range(30):
        state, metrics = step(state, batch)  # the batch is cast to bf16 by wrap_step
        first = metrics["loss"].item() if first is None else first
    assert [x.dtype for x in ft.tree.leaves(state)] == dtypes
    assert metrics["loss"].item() < first
    # apply_updates keeps the params' dtype, whatever the updates' dtype.
    fp32_updates = ft.tree.map(lambda p: torch.full(p.shape, 0.5), state.params)
    new = ft.optim.apply_updates(state.params, fp32_updates)
    assert all(v.dtype == torch.bfloat16 for v in new.values())


class _Probe(nn.Module):
    """Records the dtype of the activation flowing through it."""

    seen: list[torch.dtype] = []

    def forward(self, x):
        _Probe.seen.append(x.dtype)
        return x


def test_bf16_mixed_keeps_fp32_params_and_runs_forward_in_bf16():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 16), _Probe(), nn.ReLU(), nn.Linear(16, 1))
    policy = mp.Policy.from_name("bf16-mixed")
    state = policy.prepare_state(ft.TrainState.create(model, ft.optim.adam(1e-2)))
    step = policy.wrap_step(_mp_step(model), "cpu")
    _Probe.seen.clear()
    for _ in range(3):
        state, _ = step(state, _regression())
    assert _Probe.seen == [torch.bfloat16] * 3
    assert all(x.dtype == torch.float32 for x in ft.tree.leaves((state.params,
                                                                 state.opt_state))
               if x.is_floating_point())


# -- compile stability --------------------------------------------------------------------------

def _batches(n, bad):
    x, y = _regression()
    return [(x * INF if i in bad else x, y) for i in range(n)]


def test_compiled_fp16_step_compiles_once_across_overflow_steps(compile_counter):
    model = _mlp()
    policy = mp.Policy.from_name("16-mixed")
    state = policy.prepare_state(ft.TrainState.create(model, ft.optim.adam(1e-2)),
                                 loss_scale=mp.DynamicLossScale(init_scale=2.0**8,
                                                                growth_interval=2))
    eager_state = ft.tree.map(torch.clone, state)
    step = policy.wrap_step(_mp_step(model), "cpu")
    compiled = torch.compile(step, backend=compile_counter, fullgraph=True)
    for b in _batches(10, bad={2, 5, 6}):
        state, _ = compiled(state, b)
        eager_state, _ = step(eager_state, b)
        assert _ls(state).loss_scale.item() == _ls(eager_state).loss_scale.item()
    assert compile_counter.count == 1
    assert _ls(state).skipped_steps.item() == 3 and int(state.step) == 10
    for k in state.params:
        torch.testing.assert_close(state.params[k], eager_state.params[k])


def test_runner_donates_a_state_with_a_loss_scale(monkeypatch):
    def counting(self, gm, example_inputs):  # the runner's path, with no inductor
        self.compiles += 1
        return gm.forward

    monkeypatch.setattr(ft.CompiledStep, "_compile_graph", counting)
    model = _mlp()
    policy = mp.Policy.from_name("16-mixed")
    run = ft.compile_step(policy.wrap_step(_mp_step(model), "cpu"), compile="inductor",
                          device="cpu", on_recompile="raise")
    state = policy.prepare_state(ft.TrainState.create(model, ft.optim.adamw(1e-2)),
                                 loss_scale=mp.DynamicLossScale(init_scale=2.0**8,
                                                                growth_interval=3))
    for b in _batches(8, bad={1, 4}):
        state, _ = run(state, b)
    assert run.compiles == 1
    ls = _ls(state)
    # 2**8 -> 2**7 (skip) -> 2**6 (skip at 4, after 2 finite) -> 2**7 (3 finite: 5, 6, 7)
    assert (ls.loss_scale.item(), ls.growth_tracker.item(), ls.skipped_steps.item()) == (
        2.0**7, 0, 2)
    assert int(state.step) == 8 and sorted(run.read_metrics()) == ["loss"]


def test_fit_with_a_prepared_state_and_a_wrapped_step():
    # What fit(precision="16-mixed") does (see the report to the integrator), by hand.
    model = _mlp()
    policy = mp.Policy.from_name("16-mixed")
    state = policy.prepare_state(ft.TrainState.create(model, ft.optim.adam(1e-2)))
    data = _batches(6, bad={3})
    state = ft.fit(policy.wrap_step(_mp_step(model), "cpu"), state, data, epochs=1,
                   compile="eager", callbacks=[ft.Logging.quiet()])
    assert int(state.step) == 6 and _ls(state).skipped_steps.item() == 1


def test_wrap_step_catches_a_step_that_ignores_the_loss_scale():
    model = _mlp()
    policy = mp.Policy.from_name("16-mixed")

    def plain(state, batch):
        x, y = batch

        def loss_fn(params):
            out, _ = ft.call(model, params, state.buffers, x)
            return ((out.float() - y) ** 2).mean()

        grads, loss = torch.func.grad_and_value(loss_fn)(state.params)
        return state.apply_gradients(grads), {"loss": loss}

    state = ft.TrainState.create(model, ft.optim.sgd(0.1))
    with pytest.raises(ValueError, match=r"needs a DynamicLossScale .*prepare_state"):
        policy.wrap_step(plain, "cpu")(state, _regression())
    with pytest.raises(ValueError, match=r"returned state.extras\['loss_scale'\] unchanged"):
        policy.wrap_step(plain, "cpu")(policy.prepare_state(state), _regression())
    assert mp.Policy.from_name("32").wrap_step(plain, "cpu") is plain
    evaluate = policy.wrap_step(plain, "cpu", check_loss_scale=False)
    assert int(evaluate(policy.prepare_state(state), _regression())[0].step) == 1


def test_checkpoint_round_trip_keeps_the_loss_scale(tmp_path):
    checkpoint = pytest.importorskip("functrain.checkpoint")
    policy = mp.Policy.from_name("16-mixed")

    def fresh():
        return policy.prepare_state(ft.TrainState.create(_mlp(), ft.optim.adamw(1e-3)))

    state = fresh()
    ls = _ls(state).adjust(torch.tensor(False)).adjust(torch.tensor(True))
    state = state.replace(extras={**state.extras, "loss_scale": ls})
    checkpoint.save(tmp_path / "ckpt", state)
    back = _ls(checkpoint.restore(tmp_path / "ckpt", like=fresh()))
    assert (back.loss_scale.item(), back.growth_tracker.item(), back.skipped_steps.item()) == (
        2.0**15, 1, 1)


# -- the loss scale as a value --------------------------------------------------------------------

def test_loss_scale_is_an_immutable_pytree():
    state = ft.TrainState.create(_mlp(), ft.optim.sgd(0.1), loss_scale=mp.DynamicLossScale())
    paths = [p for p, _ in ft.tree.leaves_with_path(state, "state") if "loss_scale" in p]
    assert paths == ["state.extras['loss_scale'].loss_scale",
                     "state.extras['loss_scale'].growth_tracker",
                     "state.extras['loss_scale'].skipped_steps"]
    ls = _ls(state)
    leaves, spec = optree.tree_flatten(ls, namespace=ft.tree.NAMESPACE)
    back = optree.tree_unflatten(spec, leaves)
    assert type(back) is mp.DynamicLossScale and back.growth_interval == 2000
    assert [x.dtype for x in leaves] == [torch.float32, torch.int64, torch.int64]
    with pytest.raises(AttributeError, match="immutable"):
        ls.loss_scale = torch.tensor(1.0)
    assert "loss_scale=tensor(65536.)" in repr(ls)
    assert optree.tree_leaves(mp.NoOpLossScale(), namespace=ft.tree.NAMESPACE) == []
    prepared = mp.Policy.from_name("16-mixed").prepare_state(state)
    assert _ls(prepared) is ls  # a resumed run keeps its scale
    with pytest.raises(TypeError, match=r"extras\['loss_scale'\]: expected a DynamicLossScale"):
        mp.get_loss_scale(state.replace(extras={"loss_scale": 1.0}))


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(init_scale=0.0), ValueError, r"init_scale: expected a number in \(0, inf\), got 0.0"),
    (dict(init_scale=1e39), ValueError, "init_scale: expected a number that fits in float32"),
    (dict(growth_factor=1.0), ValueError, r"growth_factor: expected a number in \(1, inf\)"),
    (dict(backoff_factor=1.0), ValueError, r"backoff_factor: expected a number in \(0, 1\)"),
    (dict(backoff_factor=NAN), ValueError, r"backoff_factor: expected a number, got nan"),
    (dict(growth_interval=0), ValueError, "growth_interval: expected an int >= 1, got 0"),
    (dict(growth_interval=2.0), TypeError, "growth_interval: expected an int >= 1, got 2.0"),
])
def test_loss_scale_hyperparameter_errors(kwargs, error, match):
    with pytest.raises(error, match=match):
        mp.DynamicLossScale(**kwargs)


def test_all_finite():
    assert mp.all_finite({}).item()
    assert mp.all_finite({"a": torch.ones(2), "n": torch.tensor(3)}).item()
    assert not mp.all_finite([torch.ones(2), torch.tensor([-INF])]).item()


def test_public_names_have_runnable_docstrings():
    for name in mp.__all__:
        obj = getattr(mp, name)
        assert obj.__doc__ and ">>>" in obj.__doc__, name


def test_clipping_after_unscaling_sees_the_true_gradient():
    """fp16 loss scaling + clip_by_global_norm: the clip acts on the unscaled gradient."""
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 1)
    tx = ft.optim.chain(ft.optim.clip_by_global_norm(1.0), ft.optim.sgd(1.0))
    x = torch.randn(16, 4) * 10

    def loss_fn(params):
        out, _ = ft.call(model, params, {}, x)
        return (out ** 2).mean()

    plain = ft.TrainState.create(model, tx)
    scaled = mp.Policy.from_name("16-mixed").prepare_state(
        ft.TrainState.create(model, tx), mp.DynamicLossScale(init_scale=2.0 ** 12))
    grads = torch.func.grad(loss_fn)(plain.params)
    assert float(ft.tree.global_norm(grads)) > 1.0  # so the clip is active
    _, g_scaled = mp.value_and_grad(loss_fn)(scaled.params, loss_scale=mp.get_loss_scale(scaled))
    new_plain = plain.apply_gradients(grads)
    new_scaled = mp.apply_gradients(scaled, g_scaled)
    for k in plain.params:
        torch.testing.assert_close(new_scaled.params[k], new_plain.params[k], msg=k)
    step = ft.tree.map(lambda a, b: a - b, plain.params, new_plain.params)
    assert abs(float(ft.tree.global_norm(step)) - 1.0) < 1e-5  # clipped to norm 1 (lr 1)
