"""A step you can debug: eager steps run on real tensors from the first call; compiled steps
explain data-dependent ops; loss.backward() and dropped BatchNorm statistics are caught."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

import functrain as ft


def _data(n=4):
    torch.manual_seed(0)
    return [(torch.randn(8, 3), torch.randint(0, 2, (8,))) for _ in range(n)]


def _model():
    return nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))


def _grad_step(model, body=None):
    def step(state, batch):
        x, y = batch

        def loss_fn(params):
            out, buffers = ft.call(model, params, state.buffers, x, train=True)
            return nn.functional.cross_entropy(out, y), buffers

        grads, (loss, buffers) = torch.func.grad_and_value(loss_fn, has_aux=True)(state.params)
        if body is not None:
            body(loss)
        return state.apply_gradients(grads, buffers=buffers), {"loss": loss}

    return step


def test_an_eager_step_sees_real_tensors_from_the_first_call_and_runs_once_per_batch():
    model = _model()
    seen = []

    def body(loss):
        assert not isinstance(loss, torch._subclasses.FakeTensor)
        seen.append(loss.item())  # .item(), float() and `if` on a value all work
        if loss > 100:
            raise AssertionError("diverged")
        print(f"loss {float(loss):.3f}")

    state = ft.TrainState.create(model, ft.optim.sgd(0.1))
    state = ft.fit(_grad_step(model, body), state, _data(), epochs=2, compile="eager",
                   callbacks=[ft.Logging.quiet()])
    assert len(seen) == 8 and int(state.step) == 8  # no extra dry-run call


def test_an_eager_step_is_still_checked_on_its_first_call():
    state = ft.TrainState.create(_model(), ft.optim.sgd(0.1))
    with pytest.raises(TypeError, match=r"step_fn must return a pair \(state, metrics\)"):
        ft.fit(lambda s, b: s, state, _data(), epochs=1, compile="eager",
               callbacks=[ft.Logging.quiet()])
    state = ft.TrainState.create(_model(), ft.optim.sgd(0.1))
    bad = lambda s, b: (s.replace(step=s.step.float()), {})  # noqa: E731
    with pytest.raises(ft.tree.TreeMismatchError, match="the same tree, shapes and dtypes"):
        ft.fit(bad, state, _data(), epochs=1, compile="eager", callbacks=[ft.Logging.quiet()])


def test_a_compiled_step_with_item_gets_functrains_explanation_before_compiling():
    model = _model()
    state = ft.TrainState.create(model, ft.optim.sgd(0.1))
    run = ft.compile_step(_grad_step(model, lambda loss: loss.item()), compile="inductor",
                          device="cpu")
    with pytest.raises(RuntimeError, match=r"step_fn: \.item\(\) \(aten._local_scalar_dense"
                                           r"(.|\n)*compile='eager'"):
        run(state, _data()[0])
    assert run.compiles == 0


def test_torchmetrics_in_a_compiled_step_is_explained():
    tm = pytest.importorskip("torchmetrics.functional")
    model = _model()

    def body(loss):
        tm.classification.multiclass_f1_score(torch.zeros(8, dtype=torch.long),
                                              torch.zeros(8, dtype=torch.long), num_classes=2)

    state = ft.TrainState.create(model, ft.optim.sgd(0.1))
    run = ft.compile_step(_grad_step(model, body), compile="inductor", device="cpu")
    with pytest.raises(RuntimeError, match=r"returns a tensor whose shape depends on the input "
                                           r"values(.|\n)*torchmetrics"):
        run(state, _data()[0])


@pytest.mark.parametrize("compile", ["eager", "inductor"])
def test_loss_backward_in_a_step_says_to_use_torch_func_grad(compile):
    model = _model()

    def step(state, batch):
        out, _ = ft.call(model, state.params, state.buffers, batch[0])
        loss = nn.functional.cross_entropy(out, batch[1])
        loss.backward()
        return state, {"loss": loss}

    state = ft.TrainState.create(model, ft.optim.sgd(0.1))
    with pytest.raises(RuntimeError, match=r"step_fn called loss.backward\(\)(.|\n)*"
                                           r"torch.func.grad_and_value"):
        ft.compile_step(step, compile=compile, device="cpu")(state, _data()[0])


@pytest.mark.parametrize("compile", ["eager", "inductor"])
def test_dropped_batchnorm_statistics_warn_once(compile):
    model = _model()

    def step(state, batch):  # computes new buffers, returns the old ones
        def loss_fn(params):
            out, _ = ft.call(model, params, state.buffers, batch[0], train=True)
            return nn.functional.cross_entropy(out, batch[1])

        grads, loss = torch.func.grad_and_value(loss_fn)(state.params)
        return state.apply_gradients(grads), {"loss": loss}

    run = ft.compile_step(step, compile=compile, device="cpu")
    state = ft.TrainState.create(model, ft.optim.sgd(0.1))
    with pytest.warns(UserWarning, match=r"updated buffers \('1.running_mean', "
                                         r"'1.running_var', '1.num_batches_tracked'|updated "
                                         r"buffers \('1.num_batches_tracked'") as record:
        for batch in _data():
            state, _ = run(state, batch)
    assert sum("updated buffers" in str(w.message) for w in record) == 1


def test_a_step_that_returns_the_new_buffers_does_not_warn():
    model = _model()
    state = ft.TrainState.create(model, ft.optim.sgd(0.1))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        state = ft.fit(_grad_step(model), state, _data(), epochs=1, compile="eager",
                       callbacks=[ft.Logging.quiet()])
    assert not torch.equal(state.buffers["1.running_mean"], torch.zeros(4))
