"""Worker functions for tests/distributed/test_shard.py (started with functrain.distributed.launch).

Each joins the gloo group, trains or checkpoints a sharded state, and returns plain tensors and
numbers for the test in the parent process to compare.
"""

from __future__ import annotations

import os
import warnings

import torch
from _workers import recorded_graphs  # tests/distributed is on sys.path
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
    from functrain.distributed._shard_checkpoint import _map_opt_state

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
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    with recorded_graphs() as graphs:
        full = ft.TrainState.create(m, optimizer(), seed=7)
        state = fd.shard_state(full, mode=mode)
        run = ft.compile_step(fd.sharded_step(step_for(m)), compile=compile, device="cpu",
                              on_recompile="raise")
        loader = fd.shard(ft.data.ArrayLoader((x, y), PER_RANK, shuffle=False))
        for batch in loader:
            state, _ = run(state, batch)
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


# -- checkpoints ------------------------------------------------------------------------------

def _trained(world_steps=3, mode="fsdp"):
    """A sharded state after a few eager steps (the optimizer state is not all zeros)."""
    m = model()
    state = fd.shard_state(ft.TrainState.create(m, optimizer(), seed=7), mode=mode)
    run = ft.compile_step(fd.sharded_step(step_for(m)), compile="eager", device="cpu")
    x, y = _data(fd.world_size(), world_steps)
    for batch in fd.shard(ft.data.ArrayLoader((x, y), PER_RANK, shuffle=False)):
        state, _ = run(state, batch)
    return state


def _like(mode="fsdp"):
    return fd.shard_state(ft.TrainState.create(model(), optimizer(), seed=1), mode=mode)


def save_and_restore(directory, one_process_ckpt):
    """On 2 ranks: save a trained sharded state; restore it (same world: no warning) and
    restore the 1-process checkpoint ``one_process_ckpt`` into a sharded state."""
    fd.initialize("gloo", timeout=120)
    torch.set_num_threads(1)
    state = _trained()
    path = os.path.join(directory, "two")
    ft.checkpoint.save(path, state)
    files = sorted(os.listdir(path))
    with warnings.catch_warnings(record=True) as same:
        warnings.simplefilter("always")
        back = ft.checkpoint.restore(path, like=_like())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        from_one = ft.checkpoint.restore(one_process_ckpt, like=_like())
    zero1 = _trained(mode="zero1")
    zpath = os.path.join(directory, "zero1")
    ft.checkpoint.save(zpath, zero1)
    return {"saved": full_view(state), "restored": full_view(back),
            "step": int(back.step), "from_one": full_view(from_one),
            "from_one_step": int(from_one.step), "files": files,
            "warnings": [str(w.message) for w in caught if "rank(s)" in str(w.message)],
            "same_world_warnings": [str(w.message) for w in same],
            "zero1": full_view(zero1),
            "zero1_back": full_view(ft.checkpoint.restore(zpath, like=_like("zero1"))),
            "shard_rows": back.params["0.weight"].shape[0], "meta": meta_init_run()}


def restore_on(path):
    """Restore a checkpoint into a sharded state on this world (4 ranks in the test)."""
    fd.initialize("gloo", timeout=120)
    torch.set_num_threads(1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        back = ft.checkpoint.restore(path, like=_like())
    return {"restored": full_view(back), "step": int(back.step),
            "shard_rows": back.params["0.weight"].shape[0],
            "warnings": [str(w.message) for w in caught if "rank(s)" in str(w.message)]}


# -- fit ----------------------------------------------------------------------------------------

def fit_run(run_dir, max_steps, resume=None, mode="fsdp"):
    """fit on a sharded state: the one change to a data-parallel script is shard_state."""
    torch.set_num_threads(1)
    m = model()
    state = ft.TrainState.create(m, optimizer(), seed=7)
    state = fd.shard_state(state, mode=mode)  # the one line
    x, y = _data(2, 10)
    loader = ft.data.ArrayLoader((x, y), PER_RANK, shuffle=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        state = ft.fit(step_for(m), state, loader, max_steps=max_steps, run_dir=run_dir,
                       resume=resume, compile="eager",
                       callbacks=[ft.Checkpointing(every=5), ft.Logging(every=5, loggers=[])])
    return {"view": full_view(state), "step": int(state.step), "world": fd.world_size(),
            "sharded": layout_of(state) is not None,
            "warnings": [str(w.message) for w in caught if "rank(s)" in str(w.message)]}


# -- memory -------------------------------------------------------------------------------------

BIG_IN, BIG_OUT = 1000, 2048  # one 2M-parameter matrix (8 MB in float32)


def big_model():
    with torch.device("meta"):
        return nn.Sequential(nn.Linear(BIG_IN, BIG_OUT, bias=False), nn.Linear(BIG_OUT, 1))


def big_init(name, like, rows):
    """Depends on (name, row) only: any world size builds the same model."""
    rows = rows if rows is not None else slice(0, 1)
    r = torch.arange(rows.start, rows.stop, dtype=torch.float64).reshape(-1, *[1] * (
        like.ndim - 1))
    cols = torch.arange(like[0].numel() if like.ndim else 1, dtype=torch.float64)
    cols = cols.reshape(like.shape[1:]) if like.ndim else cols.reshape(())
    salt = len(name) + 1
    return (torch.sin(r * 1.3 + cols * 0.7 * salt) * 0.02).to(like.dtype).reshape(
        like[rows].shape if like.ndim else ())


def _vm() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmSize")


def memory_run(mode, budget, steps=3):
    """Create the big model's state (``mode``: "replicated", or "fsdp" from meta) and train
    ``steps`` steps, with the address space capped at what is mapped now plus ``budget``
    bytes (None: no cap). Returns what fitted and the bytes of params + optimizer state."""
    import resource

    fd.initialize("gloo", timeout=120)
    torch.set_num_threads(1)
    m = big_model()
    g = torch.Generator().manual_seed(0)
    batch = (torch.randn(4, BIG_IN, generator=g), torch.randn(4, 1, generator=g))

    def step(state, batch):
        def loss_fn(params):
            out, _ = ft.call(state.module, params, state.buffers, batch[0])
            return ((out - batch[1]) ** 2).mean()

        return state.apply_gradients(torch.func.grad(loss_fn)(state.params)), {}

    def create(module):
        if mode == "replicated":
            state = ft.TrainState.create(module.to_empty(device="cpu"), ft.optim.adamw(1e-3))
            return state.replace(params={k: big_init(k, v, slice(0, v.shape[0]))
                                         for k, v in state.params.items()})
        return fd.create_sharded_state(module, ft.optim.adamw(1e-3), big_init)

    run = fd.sharded_step(step)
    # Warm the step's code paths on a tiny model first (lazy imports, dispatcher caches).
    with torch.device("meta"):
        tiny = nn.Sequential(nn.Linear(BIG_IN, 4, bias=False), nn.Linear(4, 1))
    run(create(tiny), batch)
    base = _vm()
    if budget is not None:
        resource.setrlimit(resource.RLIMIT_AS, (base + budget, resource.RLIM_INFINITY))
    out = {"rank": fd.rank(), "mode": mode, "ok": False}
    try:
        state = create(m)
        out["bytes"] = nbytes((state.params, state.opt_state))
        for _ in range(steps):
            state, _ = run(state, batch)
        out["ok"] = True
        out["peak_vm_delta"] = _peak() - base
    except (MemoryError, RuntimeError) as e:
        if "alloc" not in str(e).lower() and not isinstance(e, MemoryError):
            raise
        out["error"] = f"{type(e).__name__}: {str(e)[:120]}"
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
    return out


def _peak() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmPeak:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmPeak")


def fit_runs(directory):
    """On 2 ranks: 20 steps uninterrupted; 10 steps, then resume='auto' to 20; 10 steps in a
    third run directory (for the test to resume on 1 process). No `initialize` here:
    shard_state starts the process group from the torchrun environment, as fit would."""
    import torch.distributed as dist

    assert not dist.is_initialized()
    whole = fit_run(os.path.join(directory, "whole"), 20)
    fit_run(os.path.join(directory, "cut"), 10)
    resumed = fit_run(os.path.join(directory, "cut"), 20, resume="auto")  # counts from 0
    fit_run(os.path.join(directory, "other"), 10)
    return {"whole": whole, "resumed": resumed}


def small_meta_model():
    with torch.device("meta"):
        return nn.Sequential(nn.Linear(6, 5), nn.Linear(5, 3))


def meta_init(asked):
    """``init`` for `small_meta_model`; records the rows it is asked for in ``asked``."""
    def init(name, like, rows):
        asked.append((name, None if rows is None else (rows.start, rows.stop)))
        return big_init(name, like, rows)

    return init


def meta_init_run():
    fd.initialize("gloo", timeout=120)
    asked = []
    state = fd.create_sharded_state(small_meta_model(), optimizer(), meta_init(asked), seed=7)
    return {"view": full_view(state), "asked": asked,
            "devices": sorted({str(t.device) for t in ft.tree.leaves(state)})}
