"""Collectives, environment detection, exact metric reduction and failure handling on 2 ranks."""

from __future__ import annotations

import os
import sys
import time

import _workers as w
import pytest
import torch

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


def test_environment_group_and_collectives():
    r0, r1 = fd.launch(w.environment_and_broadcast, 2, timeout=180)
    for r, out in enumerate((r0, r1)):
        assert out["env"].rank == out["rank"] == r and out["env"].local_rank == r
        assert out["world"] == out["env"].world_size == 2
        assert out["backend"] == "gloo" and out["is_main"] == (r == 0)
        assert torch.equal(out["broadcast"], torch.ones(3))  # rank 0's value everywhere
        assert [int(g["b"]) for g in out["gathered"]] == [0, 1]
        for g in out["gathered"]:
            assert torch.equal(g["a"], torch.tensor([0.5, -1.0, 2.0]))
            assert g["c"].dtype == torch.bfloat16 and g["c"].item() == 1.5
        assert out["psum"]["n"].item() == 3 and out["psum"]["n"].dtype == torch.int64
        assert torch.equal(out["psum"]["x"], torch.full((2,), 2.0, dtype=torch.float64))
        assert out["pmean"]["n"].item() == 3 and out["pmean"]["x"].item() == 0.5


@pytest.mark.parametrize("n,batch", [(13, 4), (7, 8)])
def test_sharded_evaluation_is_reduced_exactly(n, batch):
    outs = fd.launch(w.eval_metrics, 2, args=(n, batch), timeout=180)
    # Each example is seen by exactly one rank (uneven last shard, no padding).
    assert sum(o["local_seen"] for o in outs) == n
    assert [o["local_seen"] for o in outs] == [len(range(r, n, 2)) for r in range(2)]
    # Reference: one process over all n examples.
    x, y = w._data(n)
    torch.manual_seed(1)
    logits = x @ torch.randn(10, 4)
    correct = int((logits.argmax(-1) == y).sum())
    loss = torch.nn.functional.cross_entropy(logits, y).item()
    std = logits.max(-1).values.std(unbiased=False).item()
    for o in outs:
        assert o["collectives"] == 1  # one all_gather for the whole window
        assert o["counts"] == (correct, n, float(n))
        assert o["values"]["accuracy"] == pytest.approx(correct / n, rel=1e-6)  # float32
        assert o["values"]["loss"] == pytest.approx(loss, rel=1e-6)
        assert o["values"]["std"] == pytest.approx(std, rel=1e-5)


def test_a_rank_raising_stops_the_others_and_names_the_rank():
    start = time.monotonic()
    with pytest.raises(fd.LaunchError, match=r"rank 1 of 2 raised") as info:
        fd.launch(w.crash_in_step, 2, args=(1,), timeout=180)
    assert info.value.rank == 1 and "ValueError: boom on rank 1" in str(info.value)
    # Rank 0 was blocked in an all-reduce with a 600 s timeout; it was stopped at once.
    assert time.monotonic() - start < 170


def test_launch_timeout_kills_a_hung_run():
    with pytest.raises(fd.LaunchError, match=r"still running after timeout"):
        fd.launch(time.sleep, 2, args=(600,), timeout=3)


def test_torchrun_sees_the_environment_and_reports_a_crashing_rank(tmp_path):
    script = tmp_path / "crash.py"
    script.write_text(
        "import sys\n"
        f"sys.path.insert(0, {HERE!r})\n"
        "import _workers as w\n"
        "from functrain import distributed as fd\n"
        "env = fd.environment()\n"
        "assert env is not None and env.world_size == 2, env\n"
        "import os\n"
        "os.write(1, f'ENV {env.rank} {env.world_size}\\n'.encode())  # one write per line\n"
        "w.crash_in_step(1)\n")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
           "2", str(script)]
    start = time.monotonic()
    out = w.run_process_group(cmd, timeout=240, env={**os.environ, "PYTHONPATH": ROOT})
    text = out.stdout + out.stderr
    assert out.returncode != 0, text
    assert "ENV 0 2" in text and "ENV 1 2" in text
    assert "boom on rank 1" in text
    assert "rank      : 1" in text or "rank: 1" in text, text[-3000:]
    assert time.monotonic() - start < 230


def test_a_torchrun_restart_forms_a_new_group_not_one_with_the_dead_round(tmp_path):
    # torchrun keeps its store across restarts: without a prefix per round, the restarted
    # rank 0 read the killed round's gloo addresses and failed ("Connection refused") or hung.
    # Rank 1 of the restarted round starts late, so rank 0 would find only the stale keys.
    script = tmp_path / "restart.py"
    script.write_text(
        "import os, signal, time, torch\n"
        "from functrain import distributed as fd\n"
        "restart = os.environ['TORCHELASTIC_RESTART_COUNT']\n"
        "if restart == '1' and os.environ['RANK'] == '1':\n"
        "    time.sleep(2)\n"
        "fd.initialize('gloo', timeout=60)\n"
        "total = fd.psum(torch.tensor(fd.rank() + 1))\n"
        "if restart == '0' and fd.rank() == 1:\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
        "if restart == '1':  # one write per line: the two ranks share the pipe\n"
        "    os.write(1, f'ROUND {restart} RANK {fd.rank()} SUM {int(total)}\\n'.encode())\n"
        "time.sleep(0.5 if restart == '1' else 30)\n")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
           "2", "--max-restarts", "1", str(script)]
    out = w.run_process_group(cmd, timeout=120, cwd=tmp_path,
                              env={**os.environ, "PYTHONPATH": ROOT, "OMP_NUM_THREADS": "1"})
    text = out.stdout + out.stderr
    assert out.returncode == 0, text[-4000:]
    assert "ROUND 1 RANK 0 SUM 3" in text and "ROUND 1 RANK 1 SUM 3" in text, text[-4000:]
    assert "Connection refused" not in text
