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


def _counting_step(clock=None):
    def step(state, x):
        if clock is not None:  # eager: a fake clock, 100 s for the first (compiling) step
            clock[0] += 100.0 if not clock[1] else 1.0
            clock[1] += 1
        grads = ft.tree.map(torch.zeros_like, state.params)
        return state.apply_gradients(grads), {"loss": x.sum()}

    return step


def _summary_rows(text):
    lines = text[text.index("Run summary"):].splitlines()[1:]
    return {line[:17].strip(): line[17:].strip() for line in lines if line.strip()}


def test_bar_and_summary_report_one_steady_rate_that_leaves_the_compile_out(capsys, monkeypatch):
    import types

    import functrain._fit
    import functrain._progress
    import functrain.callbacks._run

    clock = [0.0, 0]
    fake = types.SimpleNamespace(perf_counter=lambda: clock[0])
    monkeypatch.setattr(functrain._fit, "time", fake)
    monkeypatch.setattr(functrain._progress, "time", fake)
    monkeypatch.setattr(functrain.callbacks._run, "time", fake)
    ft.fit(_counting_step(clock), ft.TrainState.create(torch.nn.Linear(2, 1), ft.optim.sgd(0.1)),
           [torch.ones(4, 2)] * 8, epochs=1, compile="eager",
           callbacks=[ft.Logging(every=2, loggers=[], progress=True)])
    captured = capsys.readouterr()
    # windows end at t = 101 (8 samples; it holds the 100 s compile), 103, 105, 107 (32):
    # 24 samples in 6 s after the first window
    bar = [ln for ln in captured.err.splitlines() if ln.startswith("train ")][-1]
    assert "4.0 samples/s" in bar and "epoch=1/1" in bar, bar
    rows = _summary_rows(captured.out)
    assert rows["samples/s"] == "4.0 (after the first log window, which holds the compile)"
    assert rows["epochs"] == "1 of 1" and rows["steps"] == "8" and rows["samples"] == "32"
    assert rows["wall time"].endswith("(107.0 s)")  # the whole run, compile included


def test_a_resumed_run_reports_steps_and_samples_since_the_run_began(tmp_path, capsys):
    def run(max_steps, resume):
        ft.fit(_counting_step(), ft.TrainState.create(torch.nn.Linear(2, 1), ft.optim.sgd(0.1)),
               [torch.ones(4, 2)] * 3, max_steps=max_steps, compile="eager", run_dir=tmp_path,
               resume=resume, callbacks=[ft.Logging(every=2, loggers=[], progress=False),
                                         ft.Checkpointing(every=2)])
        return _summary_rows(capsys.readouterr().out)

    first = run(4, None)
    assert first["steps"] == "4" and first["samples"] == "16" and "resumed at step" not in first
    resumed = run(8, "auto")  # 4 more steps: 8 since the run began, 4 examples each
    assert resumed["steps"] == "8" and resumed["samples"] == "32", resumed
    assert resumed["resumed at step"] == "4"
    assert resumed["epochs"] == "3"  # batches 7 and 8 are in the third pass over 3 batches
