"""Exact resume: a run killed with SIGKILL mid-epoch and resumed equals the straight run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

import functrain as ft

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# A model with dropout (keyed by the state's rng) and BatchNorm, data in a seeded order,
# asynchronous checkpoints every 5 steps; KILL_AT=n makes the process SIGKILL itself at the
# log of step n, which is in the middle of an epoch (8 batches per epoch).
SCRIPT = textwrap.dedent("""
    import os, signal, sys
    import torch
    from torch import nn
    import functrain as ft

    run_dir, compile, kill_at = sys.argv[1], sys.argv[2], int(os.environ.get("KILL_AT", 0))
    term_at = int(os.environ.get("TERM_AT", 0))
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Dropout(0.3),
                          nn.Linear(16, 3))
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(64, 6, generator=g), torch.randint(0, 3, (64,), generator=g)

    def step(state, batch):
        xb, yb = batch
        key = ft.random.fold_in(state.rng, state.step)
        def loss_fn(params):
            out, nb = ft.call(model, params, state.buffers, xb, rng=key)
            return nn.functional.cross_entropy(out, yb), nb
        grads, (loss, nb) = torch.func.grad_and_value(loss_fn, has_aux=True)(state.params)
        return state.apply_gradients(grads, buffers=nb), {"loss": loss}

    class Kill(ft.Callback):
        def on_log(self, loop, metrics):
            if loop.step == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)
            if loop.step == term_at:
                os.kill(os.getpid(), signal.SIGTERM)

    state = ft.TrainState.create(model, ft.optim.adamw(1e-2), seed=3)
    loader = ft.data.ArrayLoader((x, y), 8, shuffle=True, seed=5)
    ft.fit(step, state, loader, max_steps=36, run_dir=run_dir, resume="auto", compile=compile,
           callbacks=[Kill(), ft.Checkpointing(5, keep=2),
                      ft.Logging(every=3, progress=False, summary=False)])
""")


def _run(script, run_dir, compile, kill_at=0, term_at=0):
    env = {**os.environ, "PYTHONPATH": ROOT, "KILL_AT": str(kill_at), "TERM_AT": str(term_at)}
    return subprocess.run([sys.executable, str(script), str(run_dir), compile], env=env,
                          capture_output=True, text=True, timeout=600)


def _final(run_dir, like):
    mgr = ft.checkpoint.CheckpointManager(os.path.join(run_dir, "checkpoints"))
    path = mgr.latest()
    return ft.checkpoint.restore(path, like=like), ft.checkpoint.load_meta(path)


def _losses(run_dir):
    by_step = {}
    for line in open(os.path.join(run_dir, "metrics.jsonl")):
        row = json.loads(line)
        if "train/loss" in row:
            by_step[row["step"]] = row["train/loss"]  # a re-logged step: the last one counts
    return by_step


@pytest.mark.parametrize("compile", ["eager", "inductor"])
def test_sigkill_mid_epoch_then_resume_is_bit_identical(tmp_path, compile):
    script = tmp_path / "train.py"
    script.write_text(SCRIPT)
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    out = _run(script, straight, compile)
    assert out.returncode == 0, out.stderr[-3000:]
    out = _run(script, killed, compile, kill_at=21)
    assert out.returncode == -9, out.stderr[-3000:]  # really killed, mid-epoch (21 = 2*8 + 5)
    out = _run(script, killed, compile)  # resume="auto" picks up the newest intact checkpoint
    assert out.returncode == 0, out.stderr[-3000:]
    # it really resumed (from step 20, or 15 if the async save of 20 was cut by the kill)
    assert json.load(open(killed / "hparams.json"))["start_step"] in (15, 20)

    model = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.BatchNorm1d(16),
                                torch.nn.ReLU(), torch.nn.Dropout(0.3), torch.nn.Linear(16, 3))
    like = ft.TrainState.create(model, ft.optim.adamw(1e-2), seed=3)
    a, meta_a = _final(straight, like)
    b, meta_b = _final(killed, like)
    assert int(a.step) == int(b.step) == 36
    for (path, x), y in zip(ft.tree.leaves_with_path(a, "state"), ft.tree.leaves(b)):
        assert torch.equal(x, y), path  # bit for bit: params, buffers, opt_state, rng, step
    losses_a, losses_b = _losses(straight), _losses(killed)
    # every 3 steps, plus the partial windows flushed at the end of each 8-batch epoch
    assert sorted(losses_a) == sorted(set(range(3, 37, 3)) | {8, 16, 24, 32})
    assert losses_a == losses_b  # every logged loss, exactly


def test_sigterm_saves_at_the_step_boundary_and_exits_cleanly(tmp_path):
    script = tmp_path / "train.py"
    script.write_text(SCRIPT)
    out = _run(script, tmp_path / "run", "eager", term_at=12)
    # a clean exit, not a kill: 143 (128 + SIGTERM) after saving, so the stop is not success
    assert out.returncode == 143, out.stderr[-3000:]
    assert "Traceback" not in out.stderr
    mgr = ft.checkpoint.CheckpointManager(tmp_path / "run" / "checkpoints")
    assert mgr.latest().name == "step_000000012"  # saved at the boundary after the signal
    meta = ft.checkpoint.load_meta(mgr.latest())
    assert meta["epoch"] == 1 and meta["batch_in_epoch"] == 4  # mid-epoch position recorded
