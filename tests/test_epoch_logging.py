"""Epoch-level training means (Lightning's on_epoch=True) and eval_every as a fraction of an
epoch (Lightning's val_check_interval)."""

from __future__ import annotations

import pytest
import torch

import functrain as ft


def _step(state, x):
    return state.replace(step=state.step + 1), {"v": x.sum()}


def _state():
    return ft.TrainState.create(torch.nn.Linear(1, 1), ft.optim.sgd(0.1))


def test_each_epoch_logs_the_mean_of_its_steps(tmp_path):
    data = [torch.tensor([float(i)]) for i in range(5)]  # v = 0..4 each epoch
    ft.fit(_step, _state(), data, epochs=2, compile="eager", run_dir=tmp_path,
           callbacks=[ft.Logging(every=2, progress=False, summary=False)])
    rows = ft.loggers.read_jsonl(tmp_path / "metrics.jsonl")
    epoch_rows = [(r["step"], r["train/v_epoch"]) for r in rows if "train/v_epoch" in r]
    assert epoch_rows == [(5, 2.0), (10, 2.0)]  # mean of 0..4, over windows of 2, 2 and 1
    windows = [(r["step"], r["train/v"]) for r in rows if "train/v" in r]
    assert windows[:3] == [(2, 0.5), (4, 2.5), (5, 4.0)]


def test_a_fractional_eval_every_evaluates_within_each_epoch():
    seen = []

    def eval_fn(state, x):
        seen.append(int(state.step))
        return {"n": x.sum()}

    ft.fit(_step, _state(), [torch.ones(1)] * 8, epochs=2, eval_fn=eval_fn,
           eval_loader=[torch.ones(1)], eval_every=0.25, compile="eager",
           callbacks=[ft.Logging.quiet()])
    assert seen == [0, 2, 4, 6, 8, 10, 12, 14, 16]  # 0: the sanity evaluation


@pytest.mark.parametrize("bad, error, match", [
    (1.5, ValueError, r"eval_every: expected a number in \(0, 1\)"),
    (0, ValueError, r"eval_every: expected an int >= 1 or None, got 0. HINT: an int is a "
                    r"number of steps; a float in \(0, 1\) a fraction of an epoch"),
    ("2", TypeError, r"eval_every: expected an int >= 1"),
])
def test_bad_eval_every_is_named(bad, error, match):
    with pytest.raises(error, match=match):
        ft.fit(_step, _state(), [torch.ones(1)], epochs=1, eval_fn=lambda s, b: {},
               eval_loader=[torch.ones(1)], eval_every=bad, compile="eager",
               callbacks=[ft.Logging.quiet()])
