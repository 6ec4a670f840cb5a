"""Inference after training: load_weights into a plain module, best(run_dir, monitor)."""

from __future__ import annotations

import importlib.util
import json
import math

import pytest
import torch
from torch import nn

import functrain as ft
from functrain.callbacks import ModelCheckpoint
from functrain.checkpoint import best, load_weights


def _net():
    return nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 2))


def _train(run_dir, callbacks=(), eval_every=4, checkpoint_every=None):
    torch.manual_seed(0)
    model = _net()
    x = torch.randn(64, 4)
    y = (x[:, 0] > 0).long()

    def step(state, batch):
        def loss_fn(params):
            out, buffers = ft.call(model, params, state.buffers, batch[0], train=True)
            return nn.functional.cross_entropy(out, batch[1]), buffers

        grads, buffers = torch.func.grad(loss_fn, has_aux=True)(state.params)
        return state.apply_gradients(grads, buffers=buffers), {}

    def eval_fn(state, batch):
        out, _ = ft.call(model, state.params, state.buffers, batch[0], train=False)
        return {"loss": nn.functional.cross_entropy(out, batch[1])}

    state = ft.TrainState.create(model, ft.optim.adam(0.05))
    loader = ft.data.ArrayLoader((x, y), 16, shuffle=True)
    state = ft.fit(step, state, loader, epochs=3, eval_fn=eval_fn,
                   eval_loader=ft.data.ArrayLoader((x, y), 64), eval_every=eval_every,
                   callbacks=[*callbacks, ft.Logging(progress=False, summary=False),
                              *([ft.Checkpointing(every=checkpoint_every, keep=None)]
                                if checkpoint_every else [])],
                   run_dir=run_dir, compile="eager")
    return state


def _val_losses(run_dir):
    rows = ft.loggers.read_jsonl(run_dir / "metrics.jsonl")
    return {r["step"]: r["val/loss"] for r in rows if "val/loss" in r}


def test_best_finds_the_model_checkpoint_with_the_lowest_val_loss_and_weights_load(tmp_path):
    final = _train(tmp_path, [ModelCheckpoint("val/loss", save_top_k=2)])
    losses = _val_losses(tmp_path)
    want_step = min(losses, key=lambda s: (losses[s], s))
    path = best(tmp_path, "val/loss")
    assert json.loads((path / "meta.json").read_text())["step"] == want_step
    # the weights of that checkpoint, params and BatchNorm statistics, without an optimizer
    model = load_weights(path, _net())
    like = ft.TrainState.create(_net(), ft.optim.adam(0.05))
    saved = ft.checkpoint.restore(path, like=like)
    for name, p in model.named_parameters():
        assert torch.equal(p, saved.params[name]), name
    for name, b in model.named_buffers():
        assert torch.equal(b, saved.buffers[name]), name
    assert not torch.equal(model[1].running_mean, torch.zeros(8))  # trained statistics
    assert int(saved.step) == want_step
    assert final is not None


def test_periodic_checkpoints_are_ranked_by_the_logged_metrics(tmp_path):
    _train(tmp_path, eval_every=4, checkpoint_every=4)
    losses = _val_losses(tmp_path)
    ckpts = ft.checkpoint.CheckpointManager(tmp_path / "checkpoints").all()
    steps = [int(p.name.removeprefix("step_")) for p in ckpts]
    ranked = [s for s in steps if s in losses]
    want = min(ranked, key=lambda s: (losses[s], s))
    assert best(tmp_path, "val/loss").name == f"step_{want:09d}"
    want_max = min(ranked, key=lambda s: (-losses[s], s))
    # the checkpoint folder itself works too (metrics.jsonl is found beside it)
    assert best(tmp_path / "checkpoints", "val/loss", mode="max").name == f"step_{want_max:09d}"


def _fake_run(tmp_path, values):
    for step, value in values:
        ft.checkpoint.save(tmp_path / "checkpoints" / f"c{step}", {"w": torch.zeros(1)},
                           meta={"step": step, "metrics": {"val/acc": value, "train/loss": 1.0}})


def test_nan_never_wins_ties_go_to_the_earliest_and_mode_max(tmp_path):
    _fake_run(tmp_path, [(1, "NaN"), (2, 0.5), (3, 0.9), (4, 0.9), (5, "Infinity")])
    assert best(tmp_path, "val/acc", mode="min").name == "c2"
    assert best(tmp_path, "val/acc", mode="max").name == "c5"  # +inf is a value
    _fake_run(tmp_path / "b", [(3, 0.9), (4, 0.9), (1, math.nan)])
    assert best(tmp_path / "b", "val/acc", mode="max").name == "c3"


def test_a_corrupt_winner_is_skipped_with_a_warning(tmp_path):
    _fake_run(tmp_path, [(1, 0.1), (2, 0.2)])
    data = next(p for p in (tmp_path / "checkpoints" / "c1").iterdir() if p.suffix == ".distcp")
    blob = bytearray(data.read_bytes())
    blob[-1] ^= 0xFF
    data.write_bytes(bytes(blob))
    with pytest.warns(UserWarning, match="best: skipping checkpoint .*c1"):
        assert best(tmp_path, "val/acc").name == "c2"


def test_best_says_which_metrics_were_recorded(tmp_path):
    _fake_run(tmp_path, [(1, 0.1)])
    with pytest.raises(ValueError, match=r"recorded 'val/loss', got none \(they recorded "
                                         r"\['train/loss', 'val/acc'\]\). HINT: ModelCheckpoint"):
        best(tmp_path, "val/loss")
    with pytest.raises(FileNotFoundError, match="run_dir: expected a run directory"):
        best(tmp_path / "nope", "val/loss")
    with pytest.raises(ValueError, match="mode: expected one of 'min', 'max'"):
        best(tmp_path, "val/acc", mode="maximum")


def test_load_weights_from_a_dict_state_and_its_errors(tmp_path):
    src = _net()
    params, buffers = ft.split_module(src)
    ft.checkpoint.save(tmp_path / "c", {"params": params, "buffers": buffers, "step": 3})
    model = load_weights(tmp_path / "c", _net())
    assert all(torch.equal(p, params[n]) for n, p in model.named_parameters())

    with pytest.raises(KeyError, match=r"expected the params of Sequential in .*, got missing "
                                       r"'4.bias', '4.weight'"):
        load_weights(tmp_path / "c", nn.Sequential(*_net(), nn.Linear(2, 2)))
    bigger = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))
    with pytest.raises(ValueError, match=r"params\['3.weight'\]: expected shape \(3, 8\) \(the "
                                         r"module's\), got \(2, 8\)"):
        load_weights(tmp_path / "c", bigger)
    partial = nn.Sequential(nn.Linear(4, 8))
    load_weights(tmp_path / "c", partial, strict=False)
    assert torch.equal(partial[0].weight, params["0.weight"])
    with pytest.raises(TypeError, match="module: expected a torch.nn.Module"):
        load_weights(tmp_path / "c", params)
    ft.checkpoint.save(tmp_path / "other", {"w": torch.zeros(2)})
    with pytest.raises(ft.checkpoint.CheckpointError, match="expected a state with params"):
        load_weights(tmp_path / "other", _net())


def test_load_weights_reads_an_exported_safetensors_file(tmp_path):
    pytest.importorskip("safetensors")
    src = _net()
    params, buffers = ft.split_module(src)
    path = tmp_path / "w.safetensors"
    ft.checkpoint.export_weights({"params": params, "buffers": buffers}, path)
    model = load_weights(path, _net())
    assert all(torch.equal(b, buffers[n]) for n, b in model.named_buffers())


def test_export_weights_keeps_batchnorm_statistics_for_a_plain_module(tmp_path):
    state = _train(tmp_path)  # BatchNorm statistics moved off their initial values
    assert not torch.equal(state.buffers["1.running_mean"], torch.zeros(8))
    weights = ft.checkpoint.export_weights(state)
    model = _net()
    assert list(weights) == list(model.state_dict())  # names and order of a state_dict
    model.load_state_dict(weights)  # strict
    x = torch.randn(16, 4)
    want, _ = ft.call(state.module, state.params, state.buffers, x, train=False)
    torch.testing.assert_close(model.eval()(x), want, rtol=0, atol=0)
    assert all(w.device.type == "cpu" and not w.requires_grad for w in weights.values())
    # params alone (what export_params wrote) would leave the statistics at their initial
    # values: eval outputs differ
    plain = _net()
    plain.load_state_dict({**plain.state_dict(), **state.params})
    assert not torch.allclose(plain.eval()(x), want)
    if importlib.util.find_spec("safetensors"):  # the same weights through a file
        ft.checkpoint.export_weights(state, tmp_path / "w.safetensors")
        back = load_weights(tmp_path / "w.safetensors", _net()).eval()
        torch.testing.assert_close(back(x), want, rtol=0, atol=0)


def test_export_weights_names_tied_weights_frozen_params_and_skips_nonpersistent_buffers():
    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(5, 3)
            self.head = nn.Linear(3, 5, bias=False)
            self.head.weight = self.emb.weight  # tied
            self.frozen = nn.Linear(3, 3)
            self.frozen.requires_grad_(False)
            self.register_buffer("scratch", torch.ones(2), persistent=False)

    torch.manual_seed(0)
    model = Tied()
    state = ft.TrainState.create(model, ft.optim.sgd(0.1))
    state = state.replace(params={k: v + 1 for k, v in state.params.items()})
    weights = ft.checkpoint.export_weights(state)
    assert list(weights) == list(model.state_dict())  # both tied names, no "scratch"
    fresh = Tied()
    fresh.load_state_dict(weights)  # strict
    torch.testing.assert_close(fresh.head.weight, model.emb.weight + 1)
    torch.testing.assert_close(fresh.frozen.weight, model.frozen.weight)
    with pytest.raises(TypeError, match=r"state: expected a TrainState or a dict with "
                       r"'params'.*HINT"):
        ft.checkpoint.export_weights(torch.ones(2))


def test_export_params_is_a_deprecated_alias(tmp_path):
    with pytest.warns(DeprecationWarning, match=r"export_params is deprecated.*export_weights"):
        try:
            ft.checkpoint.export_params(tmp_path / "w.safetensors", {"w": torch.ones(2)})
        except ImportError:  # without safetensors: the warning came first
            pass
