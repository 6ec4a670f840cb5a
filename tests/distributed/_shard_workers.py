"""Worker functions for tests/distributed/test_shard.py (started with functrain.distributed.launch).

Each joins the gloo group, trains or checkpoints a sharded state, and returns plain tensors and
numbers for the test in the parent process to compare.
"""

from __future__ import annotations

import os
import warnings

import torch
from torch import nn

import functrain as ft
from functrain import distributed as fd
from functrain.distributed._shard import gather, layout_of

PER_RANK = 8
STEPS = 20


def _data(world, n_steps=STEPS, seed=3):
    g = torch.Generator().manual_seed(seed)
    n = world * PER_RANK * n_steps
    return torch.randn(n, 10, generator=g), torch.randint(0, 4, (n,), generator=g)


def model():
    torch.manual_seed(0)
    # 33 rows: the ranks' shards are uneven (17 + 16, one padding row on rank 1); a 1-row
    # parameter (rank 1 holds padding only) and a 0-d one (a learned temperature).
    m = nn.Sequential(nn.Linear(10, 33), nn.ReLU(), nn.Linear(33, 4))
    m.register_parameter("temp", nn.Parameter(torch.tensor(1.0)))
    m.register_parameter("row", nn.Parameter(torch.randn(1, 4) * 0.1))
    return m


def optimizer():
    def decay(params):  # weight decay on matrices only: a mask by ndim
        return {k: v.ndim > 1 and k != "row" for k, v in params.items()}

    return ft.optim.chain(ft.optim.clip_by_global_norm(0.5),
                          ft.optim.adamw(1e-2, weight_decay=0.1, mask=decay))


def step_for(m):
    def step(state, batch):  # the plain single-device step
        x, y = batch

        def loss_fn(params):
            out, _ = ft.call(m, params, state.buffers, x)
            out = out * params["temp"] + params["row"]
            return nn.functional.cross_entropy(out, y)

        grads, loss = torch.func.grad_and_value(loss_fn)(state.params)
        return state.apply_gradients(grads), {"loss": loss}

    return step


def full_view(state):
    """Params and optimizer state with full shapes (gathered from the shards), as clones."""
    from functrain.distributed._shard_state import _map_opt_state

    lay = layout_of(state)
    params, opt = state.params, state.opt_state
    if lay is not None:
        if lay.mode == "fsdp":
            params = gather(lay, params)
        tx = state.tx
        opt_leaves = []
        _map_opt_state(tx, opt, lambda x, s: opt_leaves.append((x, s)) or x)
        shards = {f"o{i}": x for i, (x, _) in enumerate(opt_leaves)}
        from functrain.distributed._shard import ShardLayout

        olay = ShardLayout("fsdp", lay.world, lay.rank, lay.group_name,
                           {f"o{i}": s for i, (_, s) in enumerate(opt_leaves)})
        full = gather(olay, shards)
        it = iter(full[f"o{i}"] for i in range(len(opt_leaves)))
        opt = _map_opt_state(tx, opt, lambda x, s: next(it))
    clone = lambda t: t.detach().clone()  # noqa: E731
    return {"params": ft.tree.map(clone, params),
            "opt_state": [clone(t) for t in ft.tree.leaves(opt)]}


def nbytes(tree):
    return sum(t.numel() * t.element_size() for t in ft.tree.leaves(tree)
               if isinstance(t, torch.Tensor))


def equivalence(cases):
    """Each (mode, compile) case: 20 sharded steps on 2 ranks; rank 0 also the reference."""
    fd.initialize("gloo", timeout=120)
    torch.set_num_threads(1)
    out = {}
    for mode, compile in cases:
        out[(mode, compile)] = _case(mode, compile)
    return out


def _case(mode, compile):
    world = fd.world_size()
    x, y = _data(world)
    m = model()
    graphs = []
    import torch._inductor.compile_fx as cfx

    original = cfx.compile_fx

    def recording(gm, example_inputs, **kw):
        graphs.append([str(n.target) for n in gm.graph.nodes if n.op == "call_function"])
        return original(gm, example_inputs, **kw)

    cfx.compile_fx = recording
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    try:
        full = ft.TrainState.create(m, optimizer(), seed=7)
        state = fd.shard_state(full, mode=mode)
        run = ft.compile_step(fd.sharded_step(step_for(m)), compile=compile, device="cpu",
                              on_recompile="raise")
        loader = fd.shard(ft.data.ArrayLoader((x, y), PER_RANK, shuffle=False))
        for batch in loader:
            state, _ = run(state, batch)
    finally:
        cfx.compile_fx = original
    res = {"state": full_view(state), "steps": int(state.step), "compiles": run.compiles,
           "graph_breaks": sum(torch._dynamo.utils.counters["graph_break"].values()),
           "collectives": [[t for t in g if any(c in t for c in (
               "all_gather", "reduce_scatter", "all_reduce"))] for g in graphs],
           "bytes": nbytes((state.params, state.opt_state)),
           "replicated_bytes": nbytes((full.params, full.opt_state))}
    if fd.rank() == 0:
        ref = ft.TrainState.create(m, optimizer(), seed=7)
        ref_run = ft.compile_step(step_for(m), compile="eager", device="cpu")
        for batch in ft.data.ArrayLoader((x, y), world * PER_RANK, shuffle=False):
            ref, _ = ref_run(ref, batch)
        res["reference"] = full_view(ref)
    return res
