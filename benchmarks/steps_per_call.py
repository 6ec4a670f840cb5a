"""K steps per call (``compile_step(steps_per_call=K)``): `fit`'s time per step against K.

The tiny MLP (784-64-10, batch 32, AdamW), the overhead-bound workload where the host's
per-call cost shows most; `fit` compiled with inductor, 64 cycled pre-made batches, each
variant's runner reused across rounds (compile excluded, reported as ``compile s``), rounds
rotated, medians. A plain eager PyTorch loop is the baseline.

    python benchmarks/steps_per_call.py [--ks 1,4,16] [--rounds 5] [--steps 640] [--threads 1]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
from torch import nn

import functrain as ft


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ks", default="1,4,16")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=640)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(784, 64), nn.ReLU(), nn.Linear(64, 10))
    batches = [(torch.randn(32, 784), torch.randint(10, (32,))) for _ in range(64)]

    def step(state, batch):
        x, y = batch

        def loss_fn(params):
            out, _ = ft.call(model, params, state.buffers, x)
            return nn.functional.cross_entropy(out, y)

        grads, loss = torch.func.grad_and_value(loss_fn)(state.params)
        return state.apply_gradients(grads), {"loss": loss}

    plain_model = nn.Sequential(nn.Linear(784, 64), nn.ReLU(), nn.Linear(64, 10))
    opt = torch.optim.AdamW(plain_model.parameters(), lr=1e-3, foreach=True)

    def plain(n):
        for i in range(n):
            x, y = batches[i % 64]
            loss = nn.functional.cross_entropy(plain_model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

    variants = {"plain eager": plain}
    compile_s = {}
    data = [batches[i % 64] for i in range(args.steps)]
    for k in (int(v) for v in args.ks.split(",")):
        runner = ft.compile_step(step, steps_per_call=k)
        holder = {"state": ft.TrainState.create(model, ft.optim.adamw(1e-3), seed=0)}

        def run(n, runner=runner, holder=holder):
            holder["state"] = ft.fit(runner, holder["state"], data[:n], epochs=1,
                                     callbacks=[ft.Logging.quiet()])

        t0 = time.perf_counter()
        run(2 * k)
        compile_s[f"fit K={k}"] = time.perf_counter() - t0
        variants[f"fit K={k}"] = run
    times = {name: [] for name in variants}
    names = list(variants)
    for r in range(args.rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            t0 = time.perf_counter()
            variants[name](args.steps)
            times[name].append((time.perf_counter() - t0) / args.steps * 1e6)
    base = statistics.median(times["plain eager"])
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), load "
          f"{os.getloadavg()[0]:.1f}, {args.rounds} rounds x {args.steps} steps, 64 cycled "
          "pre-made batches")
    print(f"{'variant':<13}{'us/step':>9}{'vs plain':>10}{'compile s':>11}")
    for name in names:
        m = statistics.median(times[name])
        c = f"{compile_s[name]:.1f}" if name in compile_s else "-"
        print(f"{name:<13}{m:>9.0f}{m / base:>10.2f}{c:>11}")


if __name__ == "__main__":
    main()
