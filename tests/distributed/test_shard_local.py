"""Sharded state without processes (in the plain suite): the layout's cuts, the one-process
identities, the global norm over shards, and the errors."""

from __future__ import annotations

import pytest
import torch

import functrain as ft
from functrain import distributed as fd
from functrain.distributed._shard_checkpoint import opt_owners


@pytest.mark.parametrize("shape", [(33, 10), (1, 4), (4,), (), (2, 3, 5), (3,)])
@pytest.mark.parametrize("world", [2, 3, 4])
def test_the_ranks_shards_stacked_are_the_full_tensor(shape, world):
    x = torch.randn(shape)
    shards = []
    for r in range(world):
        lay = fd.ShardLayout("fsdp", world, r, "", {"w": torch.Size(shape)})
        s = lay.local(x, x.shape)
        assert s.shape == lay.shard_shape(x.shape)
        n = lay.valid_rows(x.shape)
        assert not s[n:].any()  # the padding is zero
        shards.append(s)
    torch.testing.assert_close(lay.full(torch.cat(shards), x.shape), x, rtol=0, atol=0)
    # The shards are torch.chunk's (what a DTensor with Shard(0) holds).
    if x.ndim:
        chunks = list(torch.chunk(x, world)) + [x[:0]] * world
        for r in range(world):
            lay = fd.ShardLayout("fsdp", world, r, "", {"w": torch.Size(shape)})
            assert torch.equal(shards[r][:lay.valid_rows(x.shape)], chunks[r])


def test_in_one_process_every_helper_is_the_identity(tmp_path):
    model = torch.nn.Linear(3, 2)
    state = ft.TrainState.create(model, ft.optim.adamw(1e-3))
    assert fd.shard_state(state) is state
    step = fd.sharded_step(lambda s, b: (s, {}))
    assert step(state, None)[0] is state and fd.sharded_step(step) is step
    ft.checkpoint.save(tmp_path / "c", state)
    weights = fd.export_full_params(tmp_path / "c")
    assert sorted(weights) == ["bias", "weight"]
    torch.testing.assert_close(weights["weight"], model.weight.detach(), rtol=0, atol=0)


def test_create_sharded_state_in_one_process_asks_every_row():
    with torch.device("meta"):
        model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    asked = []

    def init(name, like, rows):
        asked.append((name, rows))
        return torch.ones(like[rows].shape if rows is not None else like.shape)

    state = fd.create_sharded_state(model, ft.optim.sgd(0.1), init, seed=3)
    assert ("0.weight", slice(0, 4)) in asked and ("1.num_batches_tracked", None) in asked
    assert all(t.device.type == "cpu" for t in ft.tree.leaves(state))
    assert torch.equal(state.rng, ft.random.key(3))


def test_the_global_norm_sums_its_squares_over_the_shards_inside_a_sharded_update():
    from functrain import tree as _tree

    tree = {"a": torch.tensor([3.0]), "b": torch.tensor([4.0])}
    assert ft.optim.global_norm(tree) == 5.0
    _tree._SQUARED_NORM_REDUCERS.append(lambda sq: sq * 2)  # as if 2 ranks held the same
    try:
        assert ft.optim.global_norm(tree) == pytest.approx(50 ** 0.5)
    finally:
        _tree._SQUARED_NORM_REDUCERS.pop()
    assert ft.optim.global_norm(tree) == 5.0


def test_optimizer_state_leaves_are_matched_to_their_parameters():
    lay = fd.ShardLayout("fsdp", 2, 0, "", {"w": torch.Size([5, 2]), "b": torch.Size([1])})
    tx = fd.ShardedOptimizer(ft.optim.chain(ft.optim.clip_by_global_norm(1.0),
                                            ft.optim.adamw(1e-3)), lay, group=None)
    owners = opt_owners(tx)
    state = tx.init({"w": torch.ones(5, 2), "b": torch.ones(1)})
    shapes = [tuple(t.shape) for t in ft.tree.leaves(state)]
    assert sorted(o for o in owners if o) == ["b", "b", "w", "w"]
    for o, s in zip(owners, shapes):
        assert s == (() if o is None else tuple(lay.shard_shape(lay.shapes[o])))


def test_errors_name_the_argument_and_say_what_to_do():
    model = torch.nn.Linear(3, 2)
    state = ft.TrainState.create(model, ft.optim.sgd(0.1))
    with pytest.raises(ValueError, match="mode"):
        fd.shard_state(state, mode="zero2")
    with torch.device("meta"):
        meta = torch.nn.Linear(3, 2)
    with pytest.raises(ValueError, match=r"state.params\['weight'\].*create_sharded_state"):
        fd.shard_state(ft.TrainState.create(meta, ft.optim.sgd(0.1)))
    with pytest.raises(ValueError, match=r"init\('weight', like, rows=slice\(0, 2, None\)\): "
                                         r"expected a tensor of shape \(2, 3\)"):
        fd.create_sharded_state(meta, ft.optim.sgd(0.1), lambda n, like, rows: torch.ones(1))
    with pytest.raises(TypeError, match="init: expected a function"):
        fd.create_sharded_state(meta, ft.optim.sgd(0.1), None)
    lay = fd.ShardLayout("fsdp", 2, 0, "", {"weight": torch.Size([4, 3])})
    tx = fd.ShardedOptimizer(ft.optim.sgd(0.1), lay, group=None)
    with pytest.raises(ValueError, match=r"grads\['weight'\]: expected the full shape \(4, 3\), "
                                         r"got \(2, 3\). HINT: .*sharded_step"):
        tx.apply_to_params({"weight": torch.ones(2, 3)}, tx.init({"weight": torch.ones(4, 3)}),
                           {"weight": torch.ones(4, 3)})
