"""Keyed dropout against native dropout in a compiled training step (issue 16, item 4).

Each workload is a whole training step, ``torch.func.grad`` of the loss of an ``nn.Module``
through ``torch.func.functional_call`` plus an SGD update, compiled with Inductor
(``fullgraph=True``), in three variants:

- ``none``: the model with its dropouts replaced by ``nn.Identity`` (the step's other costs)
- ``native``: ``nn.Dropout`` drawing from torch's global generator (not reproducible from a key)
- ``keyed``: the same ``nn.Dropout`` inside ``functrain.random.keyed(fold_in(rng, step))``

Printed per workload: median step time of each variant (interleaved, rotated rounds, fresh
``step`` each call, the same pre-made batch), as wall time and as the thread's CPU time (which
other processes on a loaded machine inflate far less), the dropouts' share (step minus
``none``) and the keyed/native ratios of share and of step; then the cold compile time of each
variant, each in its own process with an empty Inductor cache (so no variant reuses another's
kernels); and whether the keyed masks of the workload's dropout shapes are the same compiled
and eager, bit for bit.

Workloads: ``mlp`` (784-512-512-10, batch 128, two dropouts after the ReLUs); ``block`` (a
pre-LayerNorm transformer block, d 128, 4 heads, T 64, batch 16: dropout on the attention
weights, after the attention projection and after the MLP, written out with ``F.softmax`` so
both variants run the same attention).

    python benchmarks/keyed_dropout.py [--rounds 9] [--steps 10] [--threads 1] [--p 0.1]
        [--workloads mlp,block] [--no-compile-times] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

import functrain as ft

VARIANTS = ("none", "native", "keyed")


class Block(nn.Module):
    """A pre-LayerNorm transformer block with causal attention, then a mean-pooled head."""

    def __init__(self, d: int = 128, heads: int = 4, p: float = 0.1, vocab: int = 64) -> None:
        super().__init__()
        self.heads = heads
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))
        self.drop_attn, self.drop_proj, self.drop_mlp = (nn.Dropout(p) for _ in range(3))
        self.head = nn.Linear(d, vocab)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(b, t, 3, self.heads, d // self.heads).unbind(2)
        q, k, v = (z.transpose(1, 2) for z in (q, k, v))
        scores = q @ k.transpose(-2, -1) / math.sqrt(d // self.heads)
        causal = torch.ones(t, t, dtype=torch.bool, device=x.device).tril()
        weights = self.drop_attn(scores.masked_fill(~causal, float("-inf")).softmax(-1))
        y = (weights @ v).transpose(1, 2).reshape(b, t, d)
        x = x + self.drop_proj(self.proj(y))
        x = x + self.drop_mlp(self.mlp(self.ln2(x)))
        return self.head(x)


def make(workload: str, variant: str, p: float):
    """(model, batch x, labels y) of a workload; ``variant == "none"`` drops the dropouts."""
    torch.manual_seed(0)
    if workload == "mlp":
        model = nn.Sequential(nn.Linear(784, 512), nn.ReLU(), nn.Dropout(p), nn.Linear(512, 512),
                              nn.ReLU(), nn.Dropout(p), nn.Linear(512, 10))
        x, y = torch.randn(128, 784), torch.randint(10, (128,))
    else:
        model = Block(p=p)
        x, y = torch.randn(16, 64, 128), torch.randint(64, (16, 64))
    if variant == "none":
        for m in list(model.modules()):
            for cname, c in list(m.named_children()):
                if isinstance(c, nn.Dropout):
                    setattr(m, cname, nn.Identity())
    return model, x, y


def make_step(model: nn.Module, variant: str):
    """A pure SGD step ``(params, x, y, rng, step) -> (params, loss)``."""

    def loss_fn(params, x, y, key):
        out = torch.func.functional_call(model, params, (x,))
        return F.cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1))

    def step(params, x, y, rng, step):
        if variant == "keyed":
            with ft.random.keyed(ft.random.fold_in(rng, step)):
                grads, loss = torch.func.grad_and_value(loss_fn)(params, x, y, rng)
        else:
            grads, loss = torch.func.grad_and_value(loss_fn)(params, x, y, rng)
        return {k: v - 0.01 * grads[k] for k, v in params.items()}, loss

    return step


def compile_seconds(workload: str, variant: str, p: float) -> float:
    """First call of the compiled step in this process (Inductor cache: empty, see `main`)."""
    model, x, y = make(workload, variant, p)
    params = {k: v.detach() for k, v in model.named_parameters()}
    step = torch.compile(make_step(model, variant), fullgraph=True, dynamic=False)
    t0 = time.perf_counter()
    step(params, x, y, ft.random.key(0), torch.tensor(0))
    return time.perf_counter() - t0


def cold_compile(workload: str, variant: str, p: float, threads: int) -> float:
    """`compile_seconds` in a fresh process with an empty Inductor cache directory."""
    with tempfile.TemporaryDirectory() as cache:
        env = dict(os.environ, TORCHINDUCTOR_CACHE_DIR=cache, OMP_NUM_THREADS=str(threads))
        out = subprocess.run(
            [sys.executable, __file__, "--compile-only", workload, variant, "--p", str(p),
             "--threads", str(threads)],
            env=env, capture_output=True, text=True, timeout=1800, check=True)
    return float(out.stdout.strip().splitlines()[-1])


# The shapes each workload's dropouts see, for the eager == compiled mask check.
SITES = {"mlp": [(128, 512), (128, 512)],
         "block": [(16, 4, 64, 64), (16, 64, 128), (16, 64, 128)]}


def masks(key: torch.Tensor, workload: str, p: float) -> list[torch.Tensor]:
    """The keyed dropout of ones at each of the workload's dropout shapes (mask * scale)."""
    with ft.random.keyed(key):
        return [F.dropout(torch.ones(s), p) for s in SITES[workload]]


def time_steps(workload: str, p: float, rounds: int, steps: int) -> dict:
    """Median wall and CPU µs per compiled step of each variant; keyed masks eager == compiled."""
    fns, states = {}, {}
    for variant in VARIANTS:
        model, x, y = make(workload, variant, p)
        params = {k: v.detach() for k, v in model.named_parameters()}
        fns[variant] = torch.compile(make_step(model, variant), fullgraph=True, dynamic=False)
        states[variant] = (params, x, y)
        fns[variant](params, x, y, ft.random.key(0), torch.tensor(0))  # compile (warm cache)
    compiled_masks = torch.compile(masks, fullgraph=True, dynamic=False)
    same = all(
        torch.equal(a, b)
        for s in range(3)
        for a, b in zip(masks(ft.random.key(s), workload, p),
                        compiled_masks(ft.random.key(s), workload, p), strict=True))
    wall = {v: [] for v in VARIANTS}
    cpu = {v: [] for v in VARIANTS}
    rng = ft.random.key(0)
    counter = 1
    for r in range(rounds):
        for variant in VARIANTS[r % 3:] + VARIANTS[:r % 3]:
            params, x, y = states[variant]
            step_ids = [torch.tensor(counter + i) for i in range(steps)]
            counter += steps
            t0, c0 = time.perf_counter(), time.thread_time()
            for s in step_ids:
                params, _ = fns[variant](params, x, y, rng, s)
            cpu[variant].append((time.thread_time() - c0) / steps * 1e6)
            wall[variant].append((time.perf_counter() - t0) / steps * 1e6)
            states[variant] = (params, x, y)
    return {"wall_us": {v: statistics.median(t) for v, t in wall.items()},
            "cpu_us": {v: statistics.median(t) for v, t in cpu.items()},
            "masks_equal": same}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--steps", type=int, default=10, help="timed steps per round")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--p", type=float, default=0.1)
    parser.add_argument("--workloads", default="mlp,block")
    parser.add_argument("--no-compile-times", action="store_true")
    parser.add_argument("--json", default=None)
    parser.add_argument("--compile-only", nargs=2, metavar=("WORKLOAD", "VARIANT"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    # Inductor's FX graph cache does not hash custom lowerings: never reuse a kernel compiled
    # by an older functrain.
    torch._inductor.config.fx_graph_cache = False
    if args.compile_only:
        print(compile_seconds(*args.compile_only, args.p))
        return
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), p={args.p}, "
          f"{args.rounds} rounds x {args.steps} steps, one pre-made batch, "
          f"load at start {os.getloadavg()[0]:.1f}")
    results = {}
    for workload in args.workloads.split(","):
        res = time_steps(workload, args.p, args.rounds, args.steps)
        for clock in ("wall_us", "cpu_us"):
            us = res[clock]
            res[clock + "_share"] = {v: us[v] - us["none"] for v in ("native", "keyed")}
            share = res[clock + "_share"]
            res[clock + "_share_ratio"] = share["keyed"] / share["native"]
            res[clock + "_step_ratio"] = us["keyed"] / us["native"]
        if not args.no_compile_times:
            res["compile_s"] = {v: cold_compile(workload, v, args.p, args.threads)
                                for v in VARIANTS}
        results[workload] = res
        print(f"\n{workload}: compiled step, median us per step (wall | thread CPU time); "
              f"load now {os.getloadavg()[0]:.1f}")
        for v in VARIANTS:
            line = f"  {v:<7}{res['wall_us'][v]:>9.0f} | {res['cpu_us'][v]:>7.0f}"
            if v != "none":
                line += (f"   dropouts' share {res['wall_us_share'][v]:>6.0f} | "
                         f"{res['cpu_us_share'][v]:>6.0f}")
            if "compile_s" in res:
                line += f"   cold compile {res['compile_s'][v]:.1f} s"
            print(line)
        print(f"  keyed / native: share {res['wall_us_share_ratio']:.2f}x | "
              f"{res['cpu_us_share_ratio']:.2f}x, step {res['wall_us_step_ratio']:.3f}x | "
              f"{res['cpu_us_step_ratio']:.3f}x; keyed masks compiled == eager: "
              f"{res['masks_equal']}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
