"""model_summary and the concise state repr."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

import functrain as ft
from functrain import model_summary
from functrain._summary import state_repr


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(3))  # a parameter of the root module itself
        self.body = nn.Sequential(nn.Linear(3, 16), nn.BatchNorm1d(16))
        self.head = nn.Linear(16, 2)


def test_model_summary_counts_per_top_level_module_frozen_and_bytes():
    model = Net()
    model.head.weight.requires_grad_(False)
    state = ft.TrainState.create(model, ft.optim.adam(1e-3))
    text = model_summary(state)
    lines = text.splitlines()
    assert lines[0].split() == ["|", "Name", "|", "Type", "|", "Params", "|", "Frozen"]
    rows = [[c.strip() for c in line.split("|")] for line in lines[1:4]]
    assert rows == [["0", "(own)", "Net", "3", "0"],
                    ["1", "body", "Sequential", f"{3 * 16 + 16 + 32:,}", "0"],
                    ["2", "head", "Linear", "34", "32"]]
    total = sum(p.numel() for p in model.parameters())
    assert lines[4] == f"params {total:,} ({total * 4} B): trainable {total - 32:,}, frozen 32"
    opt = sum(x.numel() for x in ft.tree.leaves(state.opt_state))
    opt_bytes = sum(x.numel() * x.element_size() for x in ft.tree.leaves(state.opt_state))
    assert opt_bytes == 816  # Adam: 2 moments x 101 trainable params + its count; none frozen
    assert lines[5] == f"buffers 3 tensors (136 B); optimizer state {opt:,} (816 B)"


def test_model_summary_shows_the_state_dtypes_and_accepts_a_module():
    model = nn.Linear(512, 512)
    state = ft.precision.Policy.from_name("bf16-true").cast_state(
        ft.TrainState.create(model, ft.optim.sgd(0.1)))
    assert "params 262,656 (513.0 KiB)" in model_summary(state)  # bf16: 2 bytes each
    assert "params 262,656 (1.0 MiB)" in model_summary(model)
    assert "optimizer state" not in model_summary(model)
    with pytest.raises(TypeError, match="state: expected a TrainState .* got an object of type"):
        model_summary(object())


def test_state_repr_is_one_short_line_without_tensor_values():
    model = nn.Sequential(nn.Linear(1000, 1000), nn.BatchNorm1d(1000))
    state = ft.TrainState.create(model, ft.optim.adamw(1e-3), seed=0)
    state = state.replace(step=state.step + 41)
    text = repr(state)
    assert text == state_repr(state)
    assert "\n" not in text and len(text) < 400 and "tensor(" not in text
    assert text.startswith("TrainState(step=41, params=4 tensors, 1,003,000 float32 (3.8 MiB, "
                           "cpu), buffers=3 tensors, 2,001 float32/int64")
    assert "rng=key(2,)" in text and text.endswith("tx=GradientTransformation, module=Sequential)")


def test_state_repr_of_a_subclass_and_extras():
    @dataclasses.dataclass(frozen=True, eq=False)
    class EMAState(ft.TrainState):
        ema: dict = dataclasses.field(default_factory=dict)

    model = nn.Linear(2, 2)
    state = EMAState.create(model, ft.optim.sgd(0.1), ema=ft.split_module(model)[0],
                            temperature=0.5, tau=torch.tensor(0.25))
    text = state_repr(state)
    assert text.startswith("EMAState(step=0, ")
    assert "extras={'temperature': 0.5, 'tau': 0.25}" in text
    assert "ema=2 tensors, 6 float32 (24 B, cpu)" in text


def test_fit_prints_the_model_summary_at_the_start(capsys):
    model = Net()
    state = ft.TrainState.create(model, ft.optim.sgd(0.1))
    want = model_summary(state)

    def step(state, x):
        return state.replace(step=state.step + 1), {}

    ft.fit(step, state, [torch.zeros(2, 3)], epochs=1, compile="eager",
           callbacks=[ft.Logging(loggers=[], progress=False)])
    out = capsys.readouterr().out
    assert out.startswith(want + "\n")
    assert "Run summary" in out
    ft.fit(step, ft.TrainState.create(model, ft.optim.sgd(0.1)), [torch.zeros(2, 3)],
           epochs=1, compile="eager", callbacks=[ft.Logging.quiet()])
    assert capsys.readouterr().out == ""  # Logging.quiet(): no summaries
