"""The sanity evaluation: eval_fn on two batches before the first training step."""

from __future__ import annotations

import pytest
import torch

import functrain as ft


def _step(state, x):
    return state.replace(step=state.step + 1), {"v": x.sum()}


def _state():
    return ft.TrainState.create(torch.nn.Linear(1, 1), ft.optim.sgd(0.1))


def test_the_evaluation_runs_on_two_batches_before_training_and_is_not_logged(tmp_path):
    calls = []

    def eval_fn(state, x):
        calls.append(int(state.step))
        return {"n": x.sum()}

    ft.fit(_step, _state(), [torch.ones(1)] * 3, epochs=1, eval_fn=eval_fn,
           eval_loader=[torch.ones(1)] * 5, compile="eager", run_dir=tmp_path,
           callbacks=[ft.Logging(progress=False, summary=False)])
    assert calls == [0, 0] + [3] * 5  # sanity (2 batches at step 0), then the real one
    rows = ft.loggers.read_jsonl(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in rows if "val/n" in r] == [3]


def test_a_broken_eval_fn_fails_before_any_training_step():
    trained = []

    def step(state, x):
        trained.append(1)
        return _step(state, x)

    def eval_fn(state, x):
        raise KeyError("accuracy")

    with pytest.raises(KeyError, match="accuracy") as info:
        ft.fit(step, _state(), [torch.ones(1)] * 3, epochs=1, eval_fn=eval_fn,
               eval_loader=[torch.ones(1)], compile="eager", callbacks=[ft.Logging.quiet()])
    assert trained == []
    notes = getattr(info.value, "__notes__", ["sanity_eval=0"])
    assert any("sanity_eval=0" in n for n in notes)


def test_sanity_eval_can_be_turned_off():
    calls = []

    def eval_fn(state, x):
        calls.append(int(state.step))
        return {}

    ft.fit(_step, _state(), [torch.ones(1)] * 2, epochs=1, eval_fn=eval_fn,
           eval_loader=[torch.ones(1)], compile="eager",
           callbacks=[ft.Logging(loggers=[], progress=False, summary=False, sanity_eval=0)])
    assert calls == [2]
    with pytest.raises(ValueError, match="Logging.sanity_eval: expected an int >= 0"):
        ft.Logging(sanity_eval=-1)
