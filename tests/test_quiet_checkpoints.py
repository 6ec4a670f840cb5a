"""No third-party warning on every checkpoint save (DCP's "torch.distributed is disabled")."""

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
               epochs=1, compile="eager", run_dir=tmp_path, log=False,
               checkpoint=ft.Checkpointing(every=2))
        warnings.warn("still shown", UserWarning)  # other warnings are not filtered
    messages = [str(w.message) for w in caught]
    assert not [m for m in messages if "torch.distributed is" in m], messages
    assert "still shown" in messages
    assert len(ft.checkpoint.CheckpointManager(tmp_path / "checkpoints").all()) == 3
