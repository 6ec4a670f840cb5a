"""Sharded state (ZeRO-3 / FSDP, ZeRO-1) on 2 gloo processes (and 4 for resharding).

The sharded run equals the unsharded one (20 AdamW steps, global-norm clipping, a weight-decay
mask; eager and compiled, the collectives in the one graph), keeps about half the bytes per
rank, initialises from a ``meta`` module one shard per rank, trains under a memory cap that the
replicated state does not fit, and checkpoints reshard: 2 ranks -> 1 and 4, 1 -> 2, fit's
``resume="auto"`` on another world size (with a warning), and a one-call export of the full
weights.
"""

from __future__ import annotations

import functools
import os

import _shard_workers as sw
import pytest
import torch

import functrain as ft
from functrain import distributed as fd

# The distributed lane (see test_data_parallel.py): skipped by the plain `pytest` run.
pytestmark = pytest.mark.skipif(os.environ.get("FUNCTRAIN_DISTRIBUTED_TESTS") != "1",
                                reason="starts processes; run with FUNCTRAIN_DISTRIBUTED_TESTS=1"
                                " python -m pytest tests/distributed")

CASES = [("fsdp", "eager"), ("fsdp", "inductor"), ("zero1", "eager")]


def _close(a, b, **kw):
    for (path, x), y in zip(ft.tree.leaves_with_path(a, "state"), ft.tree.leaves(b),
                            strict=True):
        torch.testing.assert_close(x, y, msg=lambda m, p=path: f"{p}: {m}", **kw)


@pytest.fixture(scope="module")
def runs():
    return fd.launch(sw.equivalence, 2, args=(CASES,), timeout=420)


@pytest.mark.parametrize("case", CASES, ids=["-".join(c) for c in CASES])
def test_sharded_run_equals_the_unsharded_one(runs, case):
    r0, r1 = runs[0][case], runs[1][case]
    assert r0["steps"] == r1["steps"] == sw.STEPS
    _close(r0["state"], r1["state"], rtol=0, atol=0)  # both ranks see the same whole state
    _close(r0["state"], r0["reference"], rtol=1e-5, atol=1e-7)


def test_the_clipping_is_by_the_global_norm_over_all_shards():
    # The reference clips (its first gradient's norm is above 0.5), so a per-shard norm would
    # have shown up in test_sharded_run_equals_the_unsharded_one; check that it does clip.
    m = sw.model()
    x, y = sw._data(2)
    state = ft.TrainState.create(m, sw.optimizer())

    def loss_fn(params):
        out, _ = ft.call(m, params, state.buffers, x[:16])
        return torch.nn.functional.cross_entropy(out * params["temp"] + params["row"], y[:16])

    assert ft.optim.global_norm(torch.func.grad(loss_fn)(state.params)) > 0.5


def test_compiled_sharded_step_is_one_graph_with_the_collectives(runs):
    for rank_runs in runs:
        r = rank_runs[("fsdp", "inductor")]
        assert (r["compiles"], r["graph_breaks"]) == (1, 0)
        (graph,) = r["collectives"]
        # Large parameters are gathered and reduce-scattered one by one, small ones in one
        # collective; the global norm's sum of squares is all-reduced once.
        assert graph.count("_c10d_functional.all_reduce") == 1
        assert graph.count("_c10d_functional.all_gather_into_tensor") >= 1
        assert graph.count("_c10d_functional.reduce_scatter_tensor") >= 1


def test_params_and_optimizer_state_take_half_the_bytes_per_rank(runs):
    r = runs[0][("fsdp", "eager")]
    ratio = r["bytes"] / r["replicated_bytes"]
    # 1/2 plus the padding of uneven shards and the step counts kept whole on every rank.
    assert 0.5 <= ratio < 0.53, ratio
    z = runs[0][("zero1", "eager")]  # ZeRO-1: params whole, Adam's two moments halved
    assert 0.66 <= z["bytes"] / z["replicated_bytes"] < 0.7


# -- meta init and memory ---------------------------------------------------------------------

def test_meta_init_materialises_only_each_ranks_rows_and_equals_one_process(checkpoints):
    two = [r["meta"] for r in checkpoints[2]]  # run in the checkpoint tests' processes
    asked = []
    one = fd.create_sharded_state(sw.small_meta_model(), sw.optimizer(), sw.meta_init(asked),
                                  seed=7)
    ref = sw.full_view(one)
    for r in two:
        _close(r["view"], ref, rtol=0, atol=0)
        assert r["devices"] == ["cpu"]
    # Rank 0 is asked rows [0, 3) of the 5-row weight, rank 1 rows [3, 5): never the whole.
    assert ("0.weight", (0, 3)) in two[0]["asked"] and ("0.weight", (3, 5)) in two[1]["asked"]
    assert all(rows != (0, 5) for name, rows in two[0]["asked"] + two[1]["asked"]
               if name == "0.weight")


BUDGET = 66 << 20  # address space over what is mapped before the state is built


def test_a_model_whose_replicated_adamw_state_does_not_fit_trains_sharded(monkeypatch):
    # Big tensors come from mmap and go back on free, so the address space follows the live
    # tensors (no heap that only grows, no 64 MB arena per thread).
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "65536")
    monkeypatch.setenv("MALLOC_ARENA_MAX", "1")
    replicated = fd.launch(functools.partial(sw.memory_run, "replicated"), 2,
                           args=(BUDGET,), timeout=180)
    sharded = fd.launch(functools.partial(sw.memory_run, "fsdp"), 2, args=(BUDGET,),
                        timeout=180)
    assert not any(r["ok"] for r in replicated), replicated
    assert all(r["ok"] for r in sharded), sharded
    assert sharded[0]["bytes"] / replicated[0]["bytes"] == pytest.approx(0.5, abs=0.01)


# -- checkpoints ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    d = tmp_path_factory.mktemp("shard_ckpt")
    one = ft.TrainState.create(sw.model(), sw.optimizer(), seed=5)
    one = one.replace(step=one.step + 11, opt_state=ft.tree.map(
        lambda t: t + 0.25 if t.is_floating_point() else t, one.opt_state))
    ft.checkpoint.save(d / "one", one)
    two = fd.launch(sw.save_and_restore, 2, args=(str(d), str(d / "one")), timeout=300)
    return d, one, two


def test_two_rank_checkpoint_restores_on_two_exactly_without_warning(checkpoints):
    _, _, two = checkpoints
    for r in two:
        _close(r["restored"], r["saved"], rtol=0, atol=0)
        assert r["step"] == 3 and r["same_world_warnings"] == []
        assert r["shard_rows"] == 17  # 33 rows over 2 ranks
        _close(r["zero1_back"], r["zero1"], rtol=0, atol=0)
    assert "__1_0.distcp" in two[0]["files"]  # both ranks wrote their shards


def test_one_process_checkpoint_restores_into_a_two_rank_sharded_state(checkpoints):
    _, one, two = checkpoints
    for r in two:
        assert r["from_one_step"] == 11
        _close(r["from_one"], sw.full_view(one), rtol=0, atol=0)
        assert any("written by 1 rank(s) and is restored on 2" in w for w in r["warnings"])


def test_two_rank_checkpoint_restores_on_one_process_with_a_warning(checkpoints):
    d, _, two = checkpoints
    like = ft.TrainState.create(sw.model(), sw.optimizer())
    with pytest.warns(UserWarning, match=r"written by 2 rank\(s\) and is restored on 1"):
        back = ft.checkpoint.restore(d / "two", like=like)
    _close(sw.full_view(back), two[0]["saved"], rtol=0, atol=0)


def test_two_rank_checkpoint_restores_on_four_ranks(checkpoints):
    d, _, two = checkpoints
    four = fd.launch(sw.restore_on, 4, args=(str(d / "two"),), timeout=300)
    for r in four:
        assert r["step"] == 3 and r["shard_rows"] == 9  # 33 rows over 4 ranks
        _close(r["restored"], two[0]["saved"], rtol=0, atol=0)
        assert any("written by 2 rank(s) and is restored on 4" in w for w in r["warnings"])


def test_export_full_params_reads_the_weights_alone_ready_for_load_state_dict(checkpoints,
                                                                               tmp_path):
    d, _, two = checkpoints
    weights = fd.export_full_params(d / "two")
    _close(weights, two[0]["saved"]["params"], rtol=0, atol=0)
    m = sw.model()
    assert not m.load_state_dict(weights).missing_keys
    try:
        import safetensors  # noqa: F401
    except ImportError:
        return
    out = fd.export_full_params(d / "two", tmp_path / "w.safetensors")
    _close(ft.checkpoint.load_params(tmp_path / "w.safetensors"), out, rtol=0, atol=0)


# -- fit ----------------------------------------------------------------------------------------

def test_fit_trains_a_sharded_state_and_resumes_exactly_on_the_same_world(tmp_path):
    r0, r1 = fd.launch(sw.fit_runs, 2, args=(str(tmp_path),), timeout=400)
    for r in (r0, r1):
        assert r["whole"]["sharded"] and r["whole"]["step"] == 20
        assert r["resumed"]["step"] == 20 and r["resumed"]["warnings"] == []
        _close(r["resumed"]["view"], r["whole"]["view"], rtol=0, atol=0)
    # resume='auto' on 1 process from a 2-rank sharded run: the state, with a warning.
    one = sw.fit_run(str(tmp_path / "other"), 15, resume="auto")
    assert one["step"] == 15 and not one["sharded"]
    assert any("written by 2 rank(s) and is restored on 1" in w for w in one["warnings"])
