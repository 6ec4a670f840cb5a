"""Data parallel training on 2 gloo processes equals one process on the global batch.

20 AdamW steps of 2 ranks x batch 8 against 1 process x batch 16 (params, buffers and
optimizer state, rtol 1e-5), eager and compiled. The plain MLP is compared with the plain
full-batch step. With BatchNorm and keyed dropout the reference is one process that cuts the
global batch into the ranks' shares (BatchNorm normalises over each rank's batch, as in
DistributedDataParallel; dropout draws from the key folded with the rank) and averages
gradients and BatchNorm statistics, which is what the data-parallel step means.
"""

from __future__ import annotations

import os

import _workers as w
import pytest
import torch

import functrain as ft
from functrain import distributed as fd

# The distributed lane: these tests start processes and take minutes on 2 cores, so the plain
# `pytest` run skips them; `.ci/run` runs them as a step of their own with
# FUNCTRAIN_DISTRIBUTED_TESTS=1 python -m pytest tests/distributed. (No conftest.py here: test
# modules import the shared tests/conftest.py as `conftest`, and a second one would shadow it.)
pytestmark = pytest.mark.skipif(os.environ.get("FUNCTRAIN_DISTRIBUTED_TESTS") != "1",
                                reason="starts processes; run with FUNCTRAIN_DISTRIBUTED_TESTS=1"
                                " python -m pytest tests/distributed")

CASES = [("mlp", "eager"), ("mlp", "inductor"), ("bn_dropout", "eager"),
         ("bn_dropout", "inductor")]


@pytest.fixture(scope="module")
def runs():
    # One pair of processes for all cases: starting them costs more than a case on 2 cores.
    return fd.launch(w.equivalence, w.WORLD, args=(CASES,), timeout=420)


def _assert_trees_close(a, b, **kw):
    for (path, x), y in zip(ft.tree.leaves_with_path(a, "state"), ft.tree.leaves(b)):
        torch.testing.assert_close(x, y, msg=lambda m, p=path: f"{p}: {m}", **kw)


@pytest.mark.parametrize("case", CASES, ids=["-".join(c) for c in CASES])
def test_two_ranks_equal_one_process_on_the_global_batch(runs, case):
    r0, r1 = runs[0][case], runs[1][case]
    assert (r0["rank"], r1["rank"], r0["world"]) == (0, 1, 2)
    assert r0["steps"] == r1["steps"] == w.STEPS
    _assert_trees_close(r0["state"], r1["state"], rtol=0, atol=0)  # ranks stay identical
    _assert_trees_close(r0["state"], r0["reference"], rtol=1e-5, atol=1e-7)


def test_each_bucket_travels_while_later_gradients_are_computed(runs):
    # On the CPU the first bucket's all-reduce starts as soon as the last layers' gradients
    # are packed and is waited on after the first layer's gradient matmuls (Inductor's
    # comm/compute overlap pass, which `_backend.compile_graph` turns on for CPU graphs that
    # all-reduce); left to its defaults, Inductor waits right after starting it.
    for rank_runs in runs:
        order = rank_runs["schedule"]
        starts = [e.split()[1] for e in order if e.startswith("start")]
        assert len(starts) == 2, order
        first = order.index(f"start {starts[0]}")
        waited = order.index(f"wait {starts[0]}")
        assert "mm" in order[first:waited], order
        assert order.index(f"start {starts[1]}") < order.index(f"wait {starts[1]}"), order


@pytest.mark.parametrize("kind", ["mlp", "bn_dropout"])
def test_compiled_step_holds_the_all_reduce_in_one_graph(runs, kind):
    for rank_runs in runs:
        r = rank_runs[(kind, "inductor")]
        assert r["compiles"] == 1
        assert r["graph_breaks"] == 0
        # One graph, with the all-reduce of the float bucket (grads and BatchNorm statistics)
        # and, with BatchNorm, of the int64 bucket (num_batches_tracked).
        assert r["collectives"] == [1 if kind == "mlp" else 2]


def test_dropout_masks_differ_across_ranks_and_the_run_repeats(runs):
    r0, r1 = runs[0][("bn_dropout", "eager")], runs[1][("bn_dropout", "eager")]
    assert r0["mask"].shape == r1["mask"].shape and not torch.equal(r0["mask"], r1["mask"])
    for r in (r0, r1):
        _assert_trees_close(r["state"], r["again"], rtol=0, atol=0)


def test_batchnorm_statistics_are_identical_across_ranks(runs):
    for case in CASES:
        b0, b1 = runs[0][case]["state"]["buffers"], runs[1][case]["state"]["buffers"]
        for k in b0:
            assert torch.equal(b0[k], b1[k]), (case, k)
    assert runs[0][("bn_dropout", "eager")]["state"]["buffers"]["1.num_batches_tracked"] == 20
