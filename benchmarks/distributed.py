"""Data parallel and sharded state: 1 vs 2 processes, functrain vs DDP and FSDP2, one run.

    ./dev python benchmarks/distributed.py                  # CPU, gloo, 2 processes, ~5-8 min
    ./dev python benchmarks/distributed.py --quick          # smoke run
    ./dev python benchmarks/distributed.py --variants cd --rounds 16 --steps 50   # (c) vs (d)
    ./dev python benchmarks/distributed.py --json dist.json
    python benchmarks/distributed.py --device cuda          # one process per GPU, NCCL

Workload: MLP 784-512-512-10, per-rank batch 128 (the global batch of 2 ranks is 256), AdamW
(lr 1e-3, weight decay 1e-2), 16 pre-made batches per rank, cycled. Variants:

  (a) functrain, 1 process: ``ft.compile_step`` of the README step (no collective)
  (b) plain PyTorch, 1 process: ``torch.compile(model)`` + ``torch.optim.AdamW(fused=True)``
  (c) functrain, 2 processes: the same step with ``grads = pmean(grads)``, the all-reduces
      traced into the one compiled graph (the gradients in DDP-style flat buckets, last layer
      first, 1 MiB then up to 25 MiB: here two all-reduces, 1.02 + 1.54 MiB; on the CPU the
      first is scheduled to overlap the first layers' gradient matmuls)
  (d) DistributedDataParallel, 2 processes, around the compiled model of (b):
      ``DDP(torch.compile(model))`` + fused AdamW (gradients bucketed and all-reduced by DDP's
      hooks during backward)
  (e) functrain sharded, 2 processes: ``fd.shard_state(state)`` (params, gradients and AdamW
      state sharded, ZeRO-3) and the step of (a) through ``fd.sharded_step``: all-gather of the
      params and reduce-scatter of the gradients inside the one compiled graph
  (f) FSDP2, 2 processes: ``fully_shard`` on each Linear and on the model, then
      ``torch.compile`` of it, fused AdamW (the same memory layout as (e): 1/2 of params and
      optimizer state per rank)

Two worker processes are started once (`functrain.distributed.launch`) and run every variant
in each round, in an order rotated each round: the 2-process variants on both ranks, the
1-process ones on rank 0 while rank 1 waits in a barrier. Each round runs `--warmup` untimed
and `--steps` timed steps per variant; medians over rounds. Reported: samples/s (global batch
over the median step time), the scaling efficiency of each 2-process variant against its
1-process counterpart (samples/s of 2 processes / (2 x samples/s of 1)), and the ratio of
functrain's 2-process step time to DDP's (the goal: <= 1), with each round's ratio (a round times
both, one after the other); for the sharded variants, the bytes
of params + optimizer state per rank, (e)/(c) in step time and bytes, and (e)/(f) (the goal:
<= 1 at equal memory).

On a 2-core CPU, 2 processes of `--threads` 1 thread each use both cores; any other process on
the machine slows them, so read the medians and the ratios.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import torch
from torch import nn

import functrain as ft
from functrain import distributed as fd

LR, WD = 1e-3, 1e-2
N_BATCHES = 16


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(784, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(),
                         nn.Linear(512, 10))


def _batches(batch: int, device: torch.device, rank: int) -> list[tuple[torch.Tensor, ...]]:
    g = torch.Generator().manual_seed(100 + rank)
    return [(torch.randn(batch, 784, generator=g).to(device),
             torch.randint(0, 10, (batch,), generator=g).to(device)) for _ in range(N_BATCHES)]


def _functrain(model: nn.Module, device: torch.device, parallel: bool, sharded: bool = False):
    def step(state, batch):
        x, y = batch

        def loss_fn(params):
            logits, _ = ft.call(model, params, state.buffers, x)
            return nn.functional.cross_entropy(logits, y)

        grads, loss = torch.func.grad_and_value(loss_fn)(state.params)
        if parallel:
            grads = fd.pmean(grads)
        return state.apply_gradients(grads), {"loss": loss}

    state = ft.TrainState.create(model, ft.optim.adamw(LR, weight_decay=WD), device=device)
    if sharded:  # ZeRO-3: params, grads and AdamW state sharded; the step is unchanged
        state = fd.shard_state(state)
        step = fd.sharded_step(step)
    run = ft.compile_step(step, compile="inductor", device=device)
    box = [state]

    def one(batch):
        box[0], _ = run(box[0], batch)

    one.state_bytes = lambda: _bytes((box[0].params, box[0].opt_state))  # type: ignore
    return one, run


def _bytes(tree) -> int:
    return sum(t.numel() * t.element_size() for t in ft.tree.leaves(tree)
               if isinstance(t, torch.Tensor))


def _fsdp2(model: nn.Module, device: torch.device):
    """FSDP2: ``fully_shard`` on each Linear and the root, compiled, fused AdamW."""
    import copy

    from torch.distributed.fsdp import fully_shard

    net = copy.deepcopy(model).to(device)
    for layer in net:
        if isinstance(layer, nn.Linear):
            fully_shard(layer)
    fully_shard(net)
    opt = torch.optim.AdamW(net.parameters(), lr=LR, weight_decay=WD, fused=True)
    one = _torch_step(torch.compile(net), opt)

    def state_bytes() -> int:
        local = [p.to_local() for p in net.parameters()]
        moments = [v.to_local() if hasattr(v, "to_local") else v
                   for st in opt.state.values() for v in st.values()
                   if isinstance(v, torch.Tensor)]
        return _bytes(local) + _bytes(moments)

    one.state_bytes = state_bytes  # type: ignore[attr-defined]
    return one


def _plain(model: nn.Module, device: torch.device, ddp: bool):
    import copy

    net = copy.deepcopy(model).to(device)
    compiled = torch.compile(net)
    if ddp:
        from torch.nn.parallel import DistributedDataParallel

        compiled = DistributedDataParallel(
            compiled, device_ids=[device.index] if device.type == "cuda" else None)
    opt = torch.optim.AdamW(net.parameters(), lr=LR, weight_decay=WD, fused=True)
    return _torch_step(compiled, opt)


def _torch_step(compiled, opt):
    """One plain PyTorch training step (forward, backward, fused AdamW) of ``compiled``."""

    def one(batch):
        x, y = batch
        loss = nn.functional.cross_entropy(compiled(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return one


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time(one, batches, device, warmup: int, steps: int) -> float:
    for i in range(warmup):
        one(batches[i % N_BATCHES])
    _sync(device)
    start = time.perf_counter()
    for i in range(steps):
        one(batches[i % N_BATCHES])
    _sync(device)
    return (time.perf_counter() - start) / steps


def worker(args: dict) -> dict:
    """Runs on each rank; returns per-variant step times (rank 0's are the ones reported)."""
    import torch.distributed as dist

    fd.initialize(timeout=600)
    torch.set_num_threads(args["threads"])
    device = fd.device()
    rank = fd.rank()
    model = _model().to(device)
    batches = _batches(args["batch"], device, rank)
    variants = {}
    first = {}
    runners = {}

    def functrain_variant(name, parallel, sharded=False):
        one, runners[name] = _functrain(model, device, parallel, sharded)
        return one

    for name, build, both in [v for v in [
        ("a", lambda: functrain_variant("a", False), False),
        ("b", lambda: _plain(model, device, False), False),
        ("c", lambda: functrain_variant("c", True), True),
        ("d", lambda: _plain(model, device, True), True),
        ("e", lambda: functrain_variant("e", False, sharded=True), True),
        ("f", lambda: _fsdp2(model, device), True),
    ] if v[0] in args["variants"]]:
        if both or rank == 0:
            variants[name] = build()
            t = time.perf_counter()
            variants[name](batches[0])  # compile
            _sync(device)
            first[name] = time.perf_counter() - t
        dist.barrier()
    names = [n for n in "abcdef" if n in args["variants"]]
    both_ranks = ("c", "d", "e", "f")
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(args["rounds"]):
        order = names[r % len(names):] + names[:r % len(names)]
        for name in order:
            both = name in both_ranks
            if both or rank == 0:
                times[name].append(_time(variants[name], batches, device, args["warmup"],
                                         args["steps"]))
            dist.barrier()
    state_bytes = {k: v.state_bytes() for k, v in variants.items() if hasattr(v, "state_bytes")}
    return {"times": times, "first": first, "device": str(device), "state_bytes": state_bytes,
            "compiles": {k: r.compiles for k, r in runners.items()},
            "backend": dist.get_backend()}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--nprocs", type=int, default=2)
    p.add_argument("--batch", type=int, default=128, help="per-rank batch")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--threads", type=int, default=1, help="torch threads per process")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--quick", action="store_true", help="2 rounds of 20 steps")
    p.add_argument("--variants", default="abcdef",
                   help="which of the variants a-f to run, e.g. cd (default: all)")
    p.add_argument("--json", default=None)
    a = p.parse_args(argv)
    if not a.variants or set(a.variants) - set("abcdef"):
        p.error(f"--variants: expected letters from 'abcdef', got {a.variants!r}")
    if a.quick:
        a.rounds, a.steps, a.warmup = 2, 20, 5
    env = {} if a.device == "cuda" else {"CUDA_VISIBLE_DEVICES": ""}
    cfg = {"threads": a.threads, "batch": a.batch, "rounds": a.rounds, "steps": a.steps,
           "warmup": a.warmup, "variants": a.variants}
    t0 = time.perf_counter()
    results = fd.launch(worker, a.nprocs, args=(cfg,), timeout=3600, env=env)
    wall = time.perf_counter() - t0
    r0 = results[0]
    med = {n: statistics.median(v) for n, v in r0["times"].items()}
    n = a.nprocs
    labels = {"a": "functrain, 1 process", "b": "torch.compile + fused AdamW, 1 process",
              "c": f"functrain pmean in graph, {n} processes",
              "d": f"DDP(torch.compile(model)) + fused AdamW, {n} processes",
              "e": f"functrain sharded (shard_state, ZeRO-3), {n} processes",
              "f": f"FSDP2 fully_shard(compiled) + fused AdamW, {n} processes"}
    print(f"MLP 784-512-512-10, per-rank batch {a.batch}, {r0['backend']} on {r0['device']}, "
          f"{a.threads} thread(s) per process, {N_BATCHES} batches cycled, {a.rounds} rounds x "
          f"{a.steps} steps (medians); torch {torch.__version__}; wall {wall:.0f} s")
    print(f"{'variant':<58} {'µs/step':>9} {'samples/s':>10} {'1st step s':>10}")
    out = {"config": vars(a), "median_s": med, "samples_per_s": {}, "first_step_s": r0["first"],
           "rounds_s": r0["times"]}
    for k in r0["times"]:
        sps = a.batch * (n if k in ("c", "d", "e", "f") else 1) / med[k]
        out["samples_per_s"][k] = sps
        print(f"({k}) {labels[k]:<54} {med[k] * 1e6:9.0f} {sps:10.0f} {r0['first'][k]:10.1f}")
    sps = out["samples_per_s"]
    if "c" in r0["compiles"]:
        print(f"functrain compiles per process (warm-up included): {r0['compiles']}")
    out["compiles"] = r0["compiles"]
    for x, y, key in (("c", "a", "scaling_functrain"), ("d", "b", "scaling_ddp")):
        if x in sps and y in sps:
            out[key] = sps[x] / (n * sps[y])
            print(f"scaling efficiency, {n} processes, ({x}) over ({y}): {out[key]:.2f}")
    _ratio(out, r0["times"], "c", "d", "functrain_over_ddp",
           f"functrain / DDP step time, {n} processes")
    sb = r0["state_bytes"]
    out["state_bytes_rank0"] = sb
    if "c" in sb and "e" in sb:
        out["sharded_over_replicated_time"] = med["e"] / med["c"]
        out["sharded_over_replicated_bytes"] = sb["e"] / sb["c"]
        print("params + AdamW state per rank (rank 0): replicated (c) "
              f"{sb['c'] / 2**20:.2f} MiB, functrain sharded (e) {sb['e'] / 2**20:.2f} MiB"
              f": sharded / replicated {out['sharded_over_replicated_bytes']:.3f}; "
              f"step time (e)/(c): {out['sharded_over_replicated_time']:.2f}")
    if "f" in sb:
        print(f"FSDP2 (f) params + AdamW state per rank: {sb['f'] / 2**20:.2f} MiB")
    _ratio(out, r0["times"], "e", "f", "functrain_sharded_over_fsdp2",
           "functrain sharded / FSDP2 step time")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(out, f, indent=1)
    return out


def _ratio(out: dict, times: dict, x: str, y: str, key: str, what: str) -> None:
    """Print and store the ratio of the medians of ``x`` and ``y`` and its per-round range
    (each round times both, one after the other, so a round's ratio shares its load)."""
    if x not in times or y not in times:
        return
    per_round = [tx / ty for tx, ty in zip(times[x], times[y])]
    out[key] = statistics.median(times[x]) / statistics.median(times[y])
    out[key + "_rounds"] = per_round
    verdict = "met" if out[key] <= 1 else "NOT met"
    print(f"{what} ({x})/({y}): {out[key]:.2f} (goal <= 1: {verdict}); per round "
          f"{', '.join(f'{r:.2f}' for r in per_round)} (median {statistics.median(per_round):.2f})")


if __name__ == "__main__":
    main(sys.argv[1:])
