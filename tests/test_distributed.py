"""functrain.distributed in one process: sharding semantics, identities, errors.

The multi-process tests (2 gloo ranks) live in tests/distributed/, a CI step of their own.
"""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader, DistributedSampler, IterableDataset, TensorDataset

import functrain as ft
from functrain import distributed as fd


@pytest.mark.parametrize("n", [1, 5, 8, 13])
@pytest.mark.parametrize("world", [1, 2, 3])
@pytest.mark.parametrize("shuffle", [False, True])
def test_shard_sampler_equals_distributed_sampler(n, world, shuffle):
    data = list(range(n))
    for rank in range(world):
        ours = fd.ShardSampler(n, rank=rank, world_size=world, shuffle=shuffle, seed=5)
        ref = DistributedSampler(data, num_replicas=world, rank=rank, shuffle=shuffle, seed=5)
        for epoch in (0, 3):
            ours.set_epoch(epoch)
            ref.set_epoch(epoch)
            assert list(ours) == list(ref)
        assert len(ours) == len(ref)


@pytest.mark.parametrize("n", [5, 13])
def test_uneven_shards_cover_every_example_once(n):
    got = []
    for rank in range(3):
        s = fd.ShardSampler(n, rank=rank, world_size=3, shuffle=True, even=False)
        assert len(s) == len(list(s))
        got += list(s)
    assert sorted(got) == list(range(n))


@pytest.mark.parametrize("shuffle", [False, True])
def test_sharded_array_loader_batches_union_to_the_global_batch(shuffle):
    x = torch.arange(48.0).unsqueeze(1)
    world, per_rank = 3, 4
    full = ft.data.ArrayLoader(x, per_rank * world, shuffle=shuffle, seed=2)
    shards = [fd.shard(ft.data.ArrayLoader(x, per_rank, shuffle=shuffle, seed=2), rank=r,
                       world_size=world) for r in range(world)]
    for epoch in range(2):  # each iteration advances the epoch, as ArrayLoader does
        per_rank_batches = [list(s) for s in shards]
        for i, g in enumerate(full):
            union = torch.cat([b[i] for b in per_rank_batches]).flatten().sort().values
            assert torch.equal(union, g.flatten().sort().values), (epoch, i)
    # replayable: set_epoch(0) gives epoch 0's batches again
    shards[1].set_epoch(0)
    again = [b.clone() for b in shards[1]]
    fresh = fd.shard(ft.data.ArrayLoader(x, per_rank, shuffle=shuffle, seed=2), rank=1,
                     world_size=world)
    assert all(torch.equal(a, b) for a, b in zip(again, fresh))


def test_sharded_array_loader_pads_for_training_and_not_for_evaluation():
    x = torch.arange(5)
    train = [fd.shard(ft.data.ArrayLoader(x, 2), rank=r, world_size=2) for r in range(2)]
    assert [[b.tolist() for b in s] for s in train] == [[[0, 2], [4]], [[1, 3], [0]]]
    assert [len(s) for s in train] == [2, 2]
    ev = [fd.shard(ft.data.ArrayLoader(x, 2), rank=r, world_size=2, even=False)
          for r in range(2)]
    assert [[b.tolist() for b in s] for s in ev] == [[[0, 2], [4]], [[1, 3]]]
    assert [len(s) for s in ev] == [2, 1]
    dropped = fd.shard(ft.data.ArrayLoader(x, 2, drop_last=True), rank=0, world_size=2)
    assert [b.tolist() for b in dropped] == [[0, 2]] and len(dropped) == 1


def test_sharded_dataloader_uses_distributed_sampler_order():
    ds = TensorDataset(torch.arange(10))
    loader = DataLoader(ds, batch_size=2, shuffle=True)
    s = fd.shard(loader, rank=1, world_size=2, seed=4)
    ref = DistributedSampler(ds, num_replicas=2, rank=1, shuffle=True, seed=4)
    for epoch in range(2):
        ref.set_epoch(epoch)
        assert torch.cat([b[0] for b in s]).tolist() == list(ref)
    s.set_epoch(1)
    assert torch.cat([b[0] for b in s]).tolist() == list(ref)
    assert len(s) == 3


def test_one_rank_and_presharded_loaders_pass_through():
    loader = ft.data.ArrayLoader(torch.arange(4), 2)
    assert fd.shard(loader) is loader  # no process group: world size 1
    stream = fd.presharded([torch.ones(2)])
    assert fd.shard(stream, rank=0, world_size=2) is stream
    assert len(stream) == 1 and torch.equal(next(iter(stream)), torch.ones(2))


def test_unshardable_loaders_are_refused_with_a_hint():
    class Stream(IterableDataset):
        def __iter__(self):
            yield from range(4)

    with pytest.raises(TypeError, match=r"IterableDataset.*HINT: .*presharded"):
        fd.shard(DataLoader(Stream(), batch_size=2), rank=0, world_size=2)
    with pytest.raises(TypeError, match=r"got an object of type list.*same data"):
        fd.shard([torch.ones(2)], rank=0, world_size=2)
    ds = TensorDataset(torch.arange(4))
    with pytest.raises(TypeError, match=r"sampler=WeightedRandomSampler.*HINT"):
        fd.shard(DataLoader(ds, batch_size=2, sampler=torch.utils.data.WeightedRandomSampler(
            [1.0] * 4, 4)), rank=0, world_size=2)
    with pytest.raises(ValueError, match=r"rank: expected an int < world_size=2, got 2"):
        fd.shard(ft.data.ArrayLoader(torch.arange(4), 2), rank=2, world_size=2)


def test_collectives_are_identities_in_one_process():
    tree = {"w": torch.randn(3, 2), "n": torch.tensor(4)}
    for fn in (fd.pmean, fd.psum, fd.broadcast):
        out = fn(tree)
        assert out["w"] is tree["w"] and out["n"] is tree["n"]
    assert fd.all_gather(tree) == [tree]
    key = ft.random.key(3)
    assert fd.fold_in_rank(key) is key
    assert (fd.rank(), fd.world_size(), fd.is_main()) == (0, 1, True)


def test_pmean_in_a_compiled_step_compiles_once_without_a_group(compile_counter):
    @torch.compile(backend=compile_counter, fullgraph=True)
    def f(g):
        return fd.pmean({k: v * 2 for k, v in g.items()})

    assert torch.equal(f({"a": torch.ones(2)})["a"], torch.full((2,), 2.0))
    assert compile_counter.count == 1


def test_reduce_metrics_in_one_process_is_the_window():
    acc = {"acc": ft.metrics.Accuracy(torch.tensor(3), torch.tensor(4)),
           "loss": torch.tensor(2.0)}
    out = fd.reduce_metrics(acc)
    assert out["acc"] is acc["acc"] and isinstance(out["loss"], ft.metrics.Mean)
    with pytest.raises(TypeError, match="window: expected a dict of metrics"):
        fd.reduce_metrics([1, 2])


def test_environment_is_read_from_torchrun_variables():
    assert fd.environment({}) is None
    env = fd.environment({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1",
                          "LOCAL_WORLD_SIZE": "2", "MASTER_ADDR": "10.0.0.1",
                          "MASTER_PORT": "29500"})
    assert env == fd.Environment(3, 4, 1, 2, "10.0.0.1", 29500) and not env.is_main
    with pytest.raises(ValueError, match=r"RANK=4, WORLD_SIZE=4: expected 0 <= RANK"):
        fd.environment({"RANK": "4", "WORLD_SIZE": "4"})
    with pytest.raises(ValueError, match=r"environment variable RANK: expected an int, got 'x'"):
        fd.environment({"RANK": "x", "WORLD_SIZE": "4"})


def test_initialize_outside_torchrun_says_how_to_launch(monkeypatch):
    for k in ("RANK", "WORLD_SIZE"):
        monkeypatch.delenv(k, raising=False)
    with pytest.raises(RuntimeError, match=r"not started by torchrun. HINT: run `torchrun"):
        fd.initialize()
    with pytest.raises(ValueError, match=r"timeout: expected a number in \(0, inf\)"):
        fd.initialize(timeout=0)


def test_launch_validates_its_arguments():
    with pytest.raises(ValueError, match=r"nprocs: expected an int >= 1, got 0"):
        fd.launch(print, 0)
    with pytest.raises(ValueError, match=r"start_method: expected one of"):
        fd.launch(print, 1, start_method="thread")


def test_gradients_are_bucketed_last_leaf_first_like_ddp():
    from functrain.distributed import _collectives as c

    mib = 1 << 20
    # float32 leaves of 0.5, 0.25, 2, 0.75 and 0.5 MiB, and one int64 leaf.
    sizes = [mib // 8, mib // 16, mib // 2, 3 * mib // 16, mib // 8]
    leaves = [torch.zeros(n) for n in sizes] + [torch.zeros(3, dtype=torch.int64)]
    buckets = {(torch.float32, "cpu"): [0, 1, 2, 3, 4], (torch.int64, "cpu"): [5]}
    got = [(key[0], idx) for key, idx in c._split(buckets, leaves)]
    # The first bucket closes at 1 MiB (0.5 + 0.75), the next ones at 25 MiB.
    assert got == [(torch.float32, [4, 3]), (torch.float32, [2, 1, 0]), (torch.int64, [5])]
    assert (c.FIRST_BUCKET_BYTES, c.BUCKET_BYTES) == (mib, 25 * mib)


def _graph_with(op):
    g = torch.fx.Graph()
    x = g.placeholder("x")
    g.output(g.call_function(op, (x,)))
    return torch.fx.GraphModule(torch.nn.Module(), g)


@pytest.mark.parametrize("device, op, overlap, cpp", [("cpu", "all_reduce", True, False),
                                                      ("cpu", "all_gather_into_tensor", False,
                                                       False),
                                                      ("cpu", None, False, True),
                                                      ("meta", "all_reduce", False, False)])
def test_cpu_graphs_that_all_reduce_get_inductors_overlap_pass(monkeypatch, device, op, overlap,
                                                               cpp):
    # CPU (gloo) graphs that all-reduce are compiled with the comm/compute overlap pass (its
    # schedule is checked on 2 ranks in tests/distributed); CPU graphs without collectives with
    # Inductor's C++ wrapper (`_backend.CPU_OPTIONS`); the rest with its defaults.
    from torch.distributed import _functional_collectives  # noqa: F401  (registers the ops)

    from functrain import _backend, _compat

    seen = []
    monkeypatch.setattr(_compat, "inductor_compile",
                        lambda gm, inputs, config_patches=None: seen.append(config_patches))
    gm = _graph_with(getattr(torch.ops._c10d_functional, op) if op else torch.neg)
    _backend.compile_graph("inductor", gm, [torch.ones(2, device=device)])
    assert (seen[0].get("reorder_for_compute_comm_overlap") is True) == overlap
    assert seen[0].get("cpp_wrapper", False) == cpp
    if overlap:
        assert seen[0]["reorder_for_compute_comm_overlap_passes"] == [
            "reorder_compute_for_overlap"]
