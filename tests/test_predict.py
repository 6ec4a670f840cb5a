"""predict: outputs of every batch, concatenated, equal to a hand-written eager loop."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import functrain as ft
from functrain import predict


def _setup():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Dropout(0.5), nn.Linear(8, 3))
    model[1].running_mean.uniform_(-1, 1)  # eval mode must use these statistics
    state = ft.TrainState.create(model, ft.optim.sgd(0.1))
    x = torch.randn(10, 4)
    loader = ft.data.ArrayLoader(x, batch_size=4)  # batches of 4, 4, 2
    return model, state, x, loader


def test_predict_equals_the_model_in_eval_mode_on_all_examples():
    model, state, x, loader = _setup()
    got = predict(lambda s, b: s.apply(b, train=False)[0], state, loader, device="cpu")
    with torch.no_grad():
        want = model.eval()(x)
    torch.testing.assert_close(got, want)
    assert got.device.type == "cpu" and not got.requires_grad
    assert torch.equal(state.params["0.weight"], model[0].weight)  # state still usable


def test_pytree_outputs_are_concatenated_leaf_by_leaf_and_scalars_stacked():
    _, state, x, loader = _setup()

    def fn(s, b):
        logits = s.apply(b, train=False)[0]
        return {"label": logits.argmax(1), "parts": (logits, b.sum(1)), "n": b.new_tensor(len(b))}

    out = predict(fn, state, loader, device="cpu")
    assert out["label"].shape == (10,) and out["parts"][0].shape == (10, 3)
    torch.testing.assert_close(out["parts"][1], x.sum(1))
    assert out["n"].tolist() == [4.0, 4.0, 2.0]


def test_fn_runs_eagerly_on_real_tensors():
    _, state, _, loader = _setup()
    seen = []

    def fn(s, b):
        seen.append(float(b.sum()))  # .item() works: no fake-tensor dry run
        return s.apply(b, train=False)[0]

    predict(fn, state, loader)
    assert len(seen) == 3


def test_compiled_predict_equals_eager():
    _, state, _, _ = _setup()
    loader = ft.data.ArrayLoader(torch.randn(12, 4), batch_size=4)
    fn = lambda s, b: s.apply(b, train=False)[0]  # noqa: E731
    eager = predict(fn, state, loader, device="cpu")
    compiled = predict(fn, state, loader, device="cpu", compile="auto")
    torch.testing.assert_close(compiled, eager)


def test_precision_policy_applies_and_outputs_come_back_in_the_output_dtype():
    _, state, _, loader = _setup()
    fn = lambda s, b: s.apply(b, train=False)[0]  # noqa: E731
    ref = predict(fn, state, loader, device="cpu")
    for name in ("bf16-mixed", "bf16-true"):
        got = predict(fn, state, loader, device="cpu", precision=name)
        assert got.dtype == torch.float32, name
        torch.testing.assert_close(got, ref, atol=0.1, rtol=0.05)
        assert not torch.equal(got, ref), name  # it did compute in bfloat16


def test_errors_name_what_is_wrong():
    _, state, _, loader = _setup()
    with pytest.raises(TypeError, match="fn: expected a callable"):
        predict("f", state, loader)
    with pytest.raises(ValueError, match="loader: expected at least one batch, got none"):
        predict(lambda s, b: b, state, [])
    with pytest.raises(TypeError, match=r"outputs\['name'\]: expected a tensor, got 'x'"):
        predict(lambda s, b: {"name": "x", "y": b}, state, loader)
    with pytest.raises(ValueError, match=r"compile: expected one of"):
        predict(lambda s, b: b, state, loader, compile="fast")
    calls = iter(range(10))
    with pytest.raises(TypeError, match="for batch 1: expected outputs of the structure"):
        predict(lambda s, b: (b,) if next(calls) == 0 else {"b": b}, state, loader)
    seqs = [torch.zeros(2, 5), torch.zeros(2, 7)]
    with pytest.raises(ValueError, match=r"outputs: expected the same shape after the batch "
                                         r"dimension in every batch, got \[\(5,\), \(7,\)\]"):
        predict(lambda s, b: b, state, seqs)


def test_an_eager_marked_fn_runs_eagerly_whatever_compile_says():
    seen = []

    def fn(state, x):
        seen.append(float(x.sum().item()))  # a host read: fails under torch.compile(fullgraph)
        return x * 2

    out = ft.predict(ft.eager(fn), None, [torch.ones(2, 3), torch.zeros(1, 3)],
                     compile="inductor", device="cpu")
    assert seen == [6.0, 0.0]
    torch.testing.assert_close(out, torch.cat([torch.ones(2, 3), torch.zeros(1, 3)]) * 2)
