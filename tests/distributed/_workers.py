"""Worker functions the distributed tests start in their own processes (importable by spawn).

Each runs on every rank, joins the gloo group with `functrain.distributed.initialize`, and
returns plain tensors/values for the test in the parent process to compare.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn

import functrain as ft
from functrain import distributed as fd

WORLD = 2
PER_RANK = 8
STEPS = 20


@contextlib.contextmanager
def recorded_graphs():
    """Record the call targets of every graph Inductor compiles in the block: a list, one
    list of target names per graph (to find the collectives inside a compiled step)."""
    import torch._inductor.compile_fx as cfx

    graphs: list[list[str]] = []
    original = cfx.compile_fx
    depth = [0]

    def recording(gm, example_inputs, **kw):
        # compile_fx given config patches calls itself again inside them: count one graph.
        if depth[0] == 0:
            graphs.append([str(n.target) for n in gm.graph.nodes if n.op == "call_function"])
        depth[0] += 1
        try:
            return original(gm, example_inputs, **kw)
        finally:
            depth[0] -= 1

    cfx.compile_fx = recording
    try:
        yield graphs
    finally:
        cfx.compile_fx = original


def _data(n=WORLD * PER_RANK * STEPS, seed=3):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 10, generator=g), torch.randint(0, 4, (n,), generator=g)


def _model(kind: str) -> nn.Module:
    torch.manual_seed(0)
    mid = {"mlp": [nn.ReLU()], "bn_dropout": [nn.BatchNorm1d(32), nn.ReLU(), nn.Dropout(0.5)]}
    # No bias before BatchNorm: its gradient is zero up to rounding, which Adam would blow up
    # into steps of size lr in random directions, different under every reduction order.
    return nn.Sequential(nn.Linear(10, 32, bias=kind == "mlp"), *mid[kind], nn.Linear(32, 4))


def _grads_and_buffers(model, state, x, y, key):
    def loss_fn(params):
        out, buffers = ft.call(model, params, state.buffers, x, rng=key, train=True)
        return nn.functional.cross_entropy(out, y), buffers

    grads, (loss, buffers) = torch.func.grad_and_value(loss_fn, has_aux=True)(state.params)
    return grads, buffers, loss


def dp_step(model):
    """The data-parallel step: gradients and BatchNorm statistics averaged with pmean."""

    def step(state, batch):
        x, y = batch
        key = fd.fold_in_rank(ft.random.fold_in(state.rng, state.step))
        grads, buffers, loss = _grads_and_buffers(model, state, x, y, key)
        grads, buffers = fd.pmean((grads, buffers))
        return state.apply_gradients(grads, buffers=buffers), {"loss": loss}

    return step


def reference_step(model, kind: str):
    """One process on the global batch. For the plain MLP that is the plain step; with
    BatchNorm or dropout the global batch is cut into the ranks' shares (rank r takes rows
    r, r + WORLD, ...), each normalised / keyed as rank r would, and the results averaged."""

    def step(state, batch):
        x, y = batch
        key = ft.random.fold_in(state.rng, state.step)
        if kind == "mlp":
            grads, buffers, loss = _grads_and_buffers(model, state, x, y, key)
            return state.apply_gradients(grads, buffers=buffers), {"loss": loss}
        parts = [_grads_and_buffers(model, state, x[r::WORLD], y[r::WORLD],
                                    ft.random.fold_in(key, r)) for r in range(WORLD)]

        def mean(*xs):
            if xs[0].is_floating_point():
                return sum(xs) / WORLD
            return torch.div(sum(xs), WORLD, rounding_mode="floor")

        grads = ft.tree.map(mean, *[p[0] for p in parts])
        buffers = ft.tree.map(mean, *[p[1] for p in parts])
        return state.apply_gradients(grads, buffers=buffers), {"loss": parts[0][2]}

    return step


def _snapshot(state):
    return {"params": ft.tree.map(lambda t: t.detach().clone(), state.params),
            "buffers": ft.tree.map(lambda t: t.detach().clone(), state.buffers),
            "opt_state": [t.detach().clone() for t in ft.tree.leaves(state.opt_state)]}


def _train(step, model, loader, compile):
    run = ft.compile_step(step, compile=compile, device="cpu", on_recompile="raise")
    state = ft.TrainState.create(model, ft.optim.adamw(1e-2), seed=7)
    for batch in loader:
        state, _ = run(state, batch)
    return state, run


def equivalence(cases):
    """``{(kind, compile): _case(kind, compile)}`` for each case, in one pair of processes,
    and the compiled schedule of a step with two gradient buckets under ``"schedule"``."""
    fd.initialize("gloo", timeout=120)
    torch.set_num_threads(1)
    out: dict = {case: _case(*case) for case in cases}
    out["schedule"] = overlap_schedule()
    return out


def overlap_schedule() -> list[str]:
    """The all-reduces (``"start bufN"``), their waits (``"wait bufN"``) and the matmuls
    (``"mm"``), in order, in the Inductor code of a compiled `pmean` step whose gradients make
    two buckets (64-512-512-10: the last two layers, 1.03 MiB, then the first)."""
    import re

    from torch._inductor.utils import run_and_get_code

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(),
                          nn.Linear(512, 10))
    batch = (torch.randn(PER_RANK, 64), torch.randint(0, 10, (PER_RANK,)))
    with torch._inductor.config.patch(fx_graph_cache=False), \
            torch._functorch.config.patch(enable_autograd_cache=False):
        _, codes = run_and_get_code(_train, dp_step(model), model, [batch], "inductor")
    code = next(c for c in codes if "all_reduce_" in c)
    found = re.findall(r"all_reduce_\.default\((buf\d+)|wait_tensor\.default\((buf\d+)\)"
                       r"|extern_kernels\.(?:add)?mm\(", code)
    return [f"start {a}" if a else f"wait {b}" if b else "mm" for a, b in found]


def _case(kind: str, compile: str):
    """Train 20 AdamW steps data parallel; rank 0 also trains the 1-process reference."""
    x, y = _data()
    model = _model(kind)
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    loader = fd.shard(ft.data.ArrayLoader((x, y), PER_RANK, shuffle=False))
    with recorded_graphs() as graphs:
        state, run = _train(dp_step(model), model, loader, compile)
    out = {"rank": fd.rank(), "world": fd.world_size(), "state": _snapshot(state),
           "steps": int(state.step), "compiles": run.compiles,
           "graph_breaks": sum(torch._dynamo.utils.counters["graph_break"].values()),
           "collectives": [sum("all_reduce" in t for t in g) for g in graphs]}
    if fd.rank() == 0:
        ref_loader = ft.data.ArrayLoader((x, y), WORLD * PER_RANK, shuffle=False)
        ref, _ = _train(reference_step(model, kind), model, ref_loader, "eager")
        out["reference"] = _snapshot(ref)
    if kind == "bn_dropout":
        # This rank's first dropout mask, and a second run of the same training (eager).
        with ft.random.keyed(fd.fold_in_rank(ft.random.fold_in(ft.random.key(7), 0))):
            out["mask"] = nn.functional.dropout(torch.ones(PER_RANK, 32), 0.5) > 0
        again, _ = _train(dp_step(model), model,
                          fd.shard(ft.data.ArrayLoader((x, y), PER_RANK, shuffle=False)),
                          "eager")
        out["again"] = _snapshot(again)
    return out


def eval_metrics(n: int, batch: int):
    """Sharded evaluation (uneven last shard) reduced with reduce_metrics."""
    fd.initialize("gloo", timeout=120)
    x, y = _data(n)
    torch.manual_seed(1)
    w = torch.randn(10, 4)
    loader = fd.shard(ft.data.ArrayLoader((x, y), batch), even=False)
    acc = None
    seen = []
    for xb, yb in loader:
        logits = xb @ w
        m = {"accuracy": ft.metrics.Accuracy.from_logits(logits, yb),
             "loss": ft.metrics.Mean.from_value(
                 nn.functional.cross_entropy(logits, yb, reduction="none")),
             "std": ft.metrics.Std.from_value(logits.max(-1).values)}
        acc = ft.metrics.empty_like(m) if acc is None else acc
        acc = ft.metrics.merge_all(acc, m)
        seen.append(len(yb))
    import torch.distributed as dist

    calls = []
    original = dist.all_gather

    def counting(*a, **k):
        calls.append(1)
        return original(*a, **k)

    dist.all_gather = counting
    try:
        reduced = fd.reduce_metrics(acc)
    finally:
        dist.all_gather = original
    return {"local_seen": sum(seen), "collectives": len(calls),
            "values": ft.metrics.compute_all(reduced),
            "counts": (int(reduced["accuracy"].correct), int(reduced["accuracy"].total),
                       float(reduced["loss"].weight))}


def environment_and_broadcast():
    env = fd.initialize("gloo", timeout=60)
    import torch.distributed as dist

    t = fd.broadcast({"w": torch.full((3,), float(fd.rank() + 1))})["w"]
    # Mixed dtypes in one byte buffer, at offsets that are not multiples of 8.
    gathered = fd.all_gather({"a": torch.tensor([0.5, -1.0, 2.0]), "b": torch.tensor(fd.rank()),
                              "c": torch.tensor([1.5], dtype=torch.bfloat16)})
    s = fd.psum({"n": torch.tensor(fd.rank() + 1), "x": torch.ones(2, dtype=torch.float64)})
    m = fd.pmean({"n": torch.tensor(3), "x": torch.tensor([float(fd.rank())])})
    return {"env": env, "backend": dist.get_backend(), "rank": fd.rank(),
            "world": fd.world_size(), "is_main": fd.is_main(), "broadcast": t,
            "gathered": gathered, "psum": s, "pmean": m}


def crash_in_step(bad_rank: int):
    """Every rank all-reduces each step; ``bad_rank`` raises at step 3."""
    fd.initialize("gloo", timeout=600)  # long: the test shows a crash is noticed sooner
    x = torch.ones(4)
    for i in range(1000):
        if i == 3 and fd.rank() == bad_rank:
            raise ValueError(f"boom on rank {fd.rank()}")
        x = fd.pmean(x)
    return "finished"


def run_process_group(cmd, *, timeout, **kwargs):
    """``subprocess.run(cmd, capture_output=True, text=True)`` in a session of its own.

    torchrun's worker processes outlive torchrun when it is killed; a test that times out (or
    a worker left behind) would otherwise keep ports and CPU for the tests after it. Every
    process of the session is killed when the command ends or times out.
    """
    import os
    import signal
    import subprocess

    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, **kwargs)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        raise AssertionError(f"{cmd[2:]} still running after {timeout} s, killed. Its output:\n"
                             f"{(out + err)[-6000:]}") from None
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # stragglers of the session, if any
        except ProcessLookupError:
            pass
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)
