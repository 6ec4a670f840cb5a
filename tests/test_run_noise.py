"""Progress and noise: no DCP warning on every checkpoint save; the bar counts epochs from 1
and keeps validation results."""

from __future__ import annotations

import warnings

import torch

import functrain as ft


def test_background_and_final_saves_emit_no_dcp_warning(tmp_path):
    model = torch.nn.Linear(2, 1)

    def step(state, x):
        grads = ft.tree.map(torch.zeros_like, state.params)
        return state.apply_gradients(grads), {}

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ft.fit(step, ft.TrainState.create(model, ft.optim.sgd(0.1)), [torch.zeros(2, 2)] * 6,
               epochs=1, compile="eager", run_dir=tmp_path, callbacks=[ft.Logging.quiet(),
                                                                       ft.Checkpointing(every=2)])
        warnings.warn("still shown", UserWarning, stacklevel=1)  # not filtered
    messages = [str(w.message) for w in caught]
    assert not [m for m in messages if "torch.distributed is" in m], messages
    assert "still shown" in messages
    assert len(ft.checkpoint.CheckpointManager(tmp_path / "checkpoints").all()) == 3


def test_the_bar_counts_epochs_from_one_and_keeps_validation_results(capsys):
    model = torch.nn.Linear(2, 1)

    def step(state, x):
        grads = ft.tree.map(torch.zeros_like, state.params)
        return state.apply_gradients(grads), {"loss": x.sum()}

    def eval_fn(state, x):
        return {"mse": (x ** 2).mean()}

    ft.fit(step, ft.TrainState.create(model, ft.optim.sgd(0.1)), [torch.ones(2, 2)] * 3,
           epochs=2, eval_fn=eval_fn, eval_loader=[torch.ones(2, 2)], compile="eager",
           callbacks=[ft.Logging(every=1, loggers=[], progress=True, summary=False)])
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("train ")]
    assert "epoch=1" in lines[0]
    assert "epoch=2" in lines[-1] and "val/mse=1.0000" in lines[-1], lines
