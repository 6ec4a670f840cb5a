"""fit on 2 gloo ranks: the unchanged step trains data parallel, exactly.

Each test starts its processes with `functrain.distributed.launch` (or torchrun) under a
timeout. The 1-process references run eagerly (cheaper to start); the 2-rank runs compile.
"""

from __future__ import annotations

import functools
import os
import sys
import time

import _fit_workers as fw
import pytest
import torch
from _workers import run_process_group

import functrain as ft
from functrain import distributed as fd

# The distributed lane: these tests start processes and take minutes on 2 cores, so the plain
# `pytest` run skips them; `.ci/run` runs them as a step of their own with
# FUNCTRAIN_DISTRIBUTED_TESTS=1 python -m pytest tests/distributed. (No conftest.py here: test
# modules import the shared tests/conftest.py as `conftest`, and a second one would shadow it.)
pytestmark = pytest.mark.skipif(os.environ.get("FUNCTRAIN_DISTRIBUTED_TESTS") != "1",
                                reason="starts processes; run with FUNCTRAIN_DISTRIBUTED_TESTS=1"
                                " python -m pytest tests/distributed")

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))


def _close(a, b, **kw):
    for x, y in zip(ft.tree.leaves(a), ft.tree.leaves(b)):
        torch.testing.assert_close(x, y, **kw)


def test_fit_on_two_ranks_equals_one_process_on_the_global_batch(tmp_path):
    two = fd.launch(functools.partial(fw.fit_run, dropout=False), 2,
                    args=(str(tmp_path / "two"), 2), timeout=400)
    (one,) = fd.launch(functools.partial(fw.fit_run, dropout=False, compile="eager"), 1,
                       args=(str(tmp_path / "one"), 1), timeout=300)
    r0, r1 = two
    assert (r0["world"], r0["step"], r1["step"]) == (2, 20, 20)
    _close(r0["params"], r1["params"], rtol=0, atol=0)  # the ranks never drift apart
    _close(r0["opt_state"], r1["opt_state"], rtol=0, atol=0)
    _close(r0["params"], one["params"], rtol=1e-5, atol=1e-6)
    _close(r0["opt_state"], one["opt_state"], rtol=1e-5, atol=1e-6)
    assert r0["tx_is_original"] and r1["tx_is_original"]  # fit hands back the user's optimizer
    # Rank 0 alone logged (the same windows as one process), with the reduced values: the
    # train window is the global batch's, the evaluation covers the 13 held-out examples once
    # (an uneven last shard: 7 + 6).
    assert [sorted(m) for m in r0["metrics"]] == [sorted(m) for m in one["metrics"]]
    for m2, m1 in zip(r0["metrics"], one["metrics"]):
        for k in m1:
            assert m2[k] == pytest.approx(m1[k], rel=1e-5), (m1["step"], k)
    val = [m for m in r0["metrics"] if "val/accuracy" in m]
    assert all(round(m["val/accuracy"] * 13) == pytest.approx(m["val/accuracy"] * 13, abs=1e-4)
               for m in val)


def test_resume_on_two_ranks_repeats_the_uninterrupted_run(tmp_path):
    # Stopped at step 7 (mid-epoch, mid log window) with a checkpoint, then resumed to 20.
    twice = fd.launch(functools.partial(fw.fit_twice, compile="eager"), 2,
                      args=(str(tmp_path / "resumed"), 2, 7, 20), timeout=400)
    straight = fd.launch(functools.partial(fw.fit_run, compile="eager", epochs=None,
                                           max_steps=20), 2,
                         args=(str(tmp_path / "straight"), 2), timeout=400)
    for a, b in zip(twice, straight):
        _close(a["params"], b["params"], rtol=0, atol=0)
        _close(a["opt_state"], b["opt_state"], rtol=0, atol=0)
    # The log after the first window past the resume is the same (fit flushes the partial
    # window 6-7 when the first run ends, as it does in one process).
    tail = [m for m in twice[0]["metrics"] if m["step"] > 10]
    assert tail and tail == [m for m in straight[0]["metrics"] if m["step"] > 10]


def test_one_host_transfer_per_log_window_per_rank():
    for warmup, short, long in fd.launch(fw.sync_counts, 2, timeout=400):
        # 20 more compiled steps = 4 more log windows (log_every=5): 4 more transfers, each
        # reading the window reduced over the ranks (no transfer per step).
        assert long - short == 4, (warmup, short, long)


def _torchrun(script, tmp_path, *extra, timeout=300):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
           "2", *extra, str(script)]
    return run_process_group(cmd, timeout=timeout, cwd=tmp_path,
                             env={**os.environ, "PYTHONPATH": ROOT, "OMP_NUM_THREADS": "1"})


def _readme_block(title):
    text = open(os.path.join(ROOT, "README.md")).read()
    body = text.split(f"## {title}", 1)[1]
    return body.split("```python\n", 1)[1].split("```", 1)[0]


def test_the_readme_script_runs_unchanged_under_torchrun(tmp_path):
    # "A complete run" from the README, with its 50 epochs cut to 2 (its only change).
    code = _readme_block("A complete run").replace("epochs=50", "epochs=2")
    assert "epochs=2" in code
    (tmp_path / "run.py").write_text(code)
    out = _torchrun(tmp_path / "run.py", tmp_path)
    assert out.returncode == 0, (out.stdout + out.stderr)[-4000:]
    assert out.stdout.count("Run summary") == 1  # rank 0 alone prints
    lines = (tmp_path / "runs/demo/metrics.jsonl").read_text().splitlines()
    steps = [eval(line.replace("null", "None"))["step"] for line in lines]
    assert steps == sorted(steps) and len(steps) == len(set(map(str, lines)))
    assert max(steps) == 2 * 14  # 1792 examples / (2 ranks x 64) = 14 steps per epoch
    ckpts = [p for p in (tmp_path / "runs/demo/checkpoints").iterdir()
             if p.name.startswith(("step_", "best", "last"))]
    assert ckpts and not [p for p in (tmp_path / "runs/demo/checkpoints").iterdir()
                          if p.name.startswith(".tmp")]
    for ckpt in ckpts:  # written by both ranks together, one manifest
        names = sorted(f.name for f in ckpt.iterdir())
        assert "manifest.json" in names and ".metadata" in names, names
        assert {n.split("_")[2] for n in names if n.endswith(".distcp")} == {"0", "1"}, names
        ft.checkpoint.verify(ckpt)


def test_a_rank_failing_in_fit_ends_every_rank_with_an_error_naming_it(tmp_path):
    script = tmp_path / "crash.py"
    script.write_text(
        "import sys\n"
        f"sys.path.insert(0, {HERE!r})\n"
        "import functrain as ft, _fit_workers as fw\n"
        "from functrain import distributed as fd\n"
        "class Boom(ft.Callback):\n"
        "    def on_log(self, loop, metrics):\n"
        "        if fd.rank() == 1:\n"
        "            raise RuntimeError('boom in a callback on rank 1')\n"
        "fw.CALLBACKS = [Boom()]\n"
        "fw.fit_run(None, 2, compile='eager', epochs=5, evaluate=False)\n")
    start = time.monotonic()
    out = _torchrun(script, tmp_path)
    text = out.stdout + out.stderr
    assert out.returncode != 0
    assert "boom in a callback on rank 1" in text
    assert "rank      : 1" in text or "rank: 1" in text, text[-3000:]
    assert time.monotonic() - start < 280


@pytest.fixture(scope="module")
def fp16_and_runner():
    return fd.launch(fw.fp16_and_runner_runs, 2, timeout=400)


def test_fp16_ranks_skip_a_step_together_when_one_rank_overflows(fp16_and_runner):
    # Rank 1's share of the batch at step INF_STEP holds an inf, rank 0's does not: both ranks
    # must skip that step and back off the loss scale (the finite flag is all-reduced inside
    # the compiled step), as one process on the global batch does.
    r0, r1 = (r["fp16"] for r in fp16_and_runner)
    ref = fp16_and_runner[0]["fp16_reference"]
    assert r0["loss_scale"] == r1["loss_scale"] == ref["loss_scale"] == (2.0**15, 1)
    assert r0["step"] == r1["step"] == 8
    for part in ("params", "opt_state"):
        _close(r0[part], r1[part], rtol=0, atol=0)
        # float16 forward: 2 x 8 and 1 x 16 round the weight gradients' sums differently
        _close(r0[part], ref[part], rtol=2e-3, atol=1e-4)
    assert all(torch.isfinite(v).all() for v in r0["params"].values())


def test_a_compiled_step_runner_trains_on_ranks_as_the_plain_step_does(fp16_and_runner):
    # ft.compile_step(step) passed to fit: the rank folded into the dropout key and the
    # BatchNorm statistics averaged, exactly as for the plain step function.
    for r in fp16_and_runner:
        for part in ("params", "buffers", "opt_state"):
            _close(r["runner"][part], r["plain"][part], rtol=0, atol=0)
    r0, r1 = (r["runner"] for r in fp16_and_runner)
    for part in ("params", "buffers", "opt_state"):
        _close(r0[part], r1[part], rtol=0, atol=0)  # the ranks stay identical


def test_an_iterable_loader_is_refused_on_several_ranks():
    with pytest.raises(fd.LaunchError, match=r"IterableDataset.*presharded"):
        fd.launch(fw.fit_iterable, 2, timeout=200)


def test_sigkill_of_one_rank_restarts_from_the_last_checkpoint_bit_identically(tmp_path):
    script = tmp_path / "killed.py"
    script.write_text(
        "import os, signal, sys, torch\n"
        f"sys.path.insert(0, {HERE!r})\n"
        "import functrain as ft, _fit_workers as fw\n"
        "from functrain import distributed as fd\n"
        "first = os.environ.get('TORCHELASTIC_RESTART_COUNT', '0') == '0'\n"
        "class Kill(ft.Callback):\n"
        "    def on_log(self, loop, metrics):\n"
        "        if first and fd.rank() == 1 and loop.step == 15:\n"
        "            os.kill(os.getpid(), signal.SIGKILL)\n"
        "fw.CALLBACKS = [Kill()]\n"
        "out = fw.fit_run(sys.argv[1], 2, compile='eager', epochs=None, max_steps=25,\n"
        "                 checkpoint_every=5, resume='auto')\n"
        "if fd.rank() == 0:\n"
        "    torch.save(out['params'], sys.argv[2])\n")
    run_dir, result = tmp_path / "run", tmp_path / "params.pt"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
           "2", "--max-restarts", "1", str(script), str(run_dir), str(result)]
    # It once hung here in the full lane: torchrun keeps its store across the restart, and the
    # restarted ranks read the killed round's gloo addresses; `initialize` now gives each
    # round a store prefix of its own (see test_collectives.py's restart test).
    out = run_process_group(cmd, timeout=240, cwd=tmp_path,
                            env={**os.environ, "PYTHONPATH": ROOT, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, (out.stdout + out.stderr)[-4000:]
    assert out.stdout.count("Run summary") == 1  # the restarted run's (rank 0 died too)
    restarted = torch.load(result)
    straight = fd.launch(functools.partial(fw.fit_run, compile="eager", epochs=None,
                                           max_steps=25, checkpoint_every=5), 2,
                         args=(str(tmp_path / "straight"), 2), timeout=300)
    _close(restarted, straight[0]["params"], rtol=0, atol=0)
