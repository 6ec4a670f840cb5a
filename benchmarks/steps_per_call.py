"""K steps per call (``compile_step(steps_per_call=K)``): `fit`'s time per step against K.

The tiny MLP (784-64-10, batch 32, AdamW), the overhead-bound workload where the host's
per-call cost shows most; `fit` compiled (inductor on the CPU, "cudagraphs" on CUDA), 64
cycled pre-made batches on the device, each variant's runner reused across rounds (compile
excluded, reported as ``compile s``), rounds rotated, medians. Baselines in the same run: a
plain eager PyTorch loop and the bare compiled single step without `fit` (one
``torch.compile`` graph updating the state in place; on CUDA ``mode="reduce-overhead"``, CUDA
graphs: issue 16's goal there is `fit` <= 1.0x this bare single-step time). On CUDA every
round ends with ``torch.cuda.synchronize()`` before the clock is read.

    python benchmarks/steps_per_call.py [--ks 1,4,16] [--rounds 5] [--steps 640] [--threads 1]
    python benchmarks/steps_per_call.py --device cuda --ks 1,4,16,64 --steps 6400
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
from step_overhead import compile_bare  # this folder's step_overhead.py
from torch import nn

import functrain as ft


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ks", default="1,4,16")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=640)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    args = parser.parse_args()
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(784, 64), nn.ReLU(), nn.Linear(64, 10)).to(device)
    batches = [(torch.randn(32, 784, device=device), torch.randint(10, (32,), device=device))
               for _ in range(64)]

    def step(state, batch):
        x, y = batch

        def loss_fn(params):
            out, _ = ft.call(model, params, state.buffers, x)
            return nn.functional.cross_entropy(out, y)

        grads, loss = torch.func.grad_and_value(loss_fn)(state.params)
        return state.apply_gradients(grads), {"loss": loss}

    def new_state():
        return ft.tree.map(lambda x: x.to(device),
                           ft.TrainState.create(model, ft.optim.adamw(1e-3), seed=0))

    plain_model = nn.Sequential(nn.Linear(784, 64), nn.ReLU(), nn.Linear(64, 10)).to(device)
    opt = torch.optim.AdamW(plain_model.parameters(), lr=1e-3, foreach=True)

    def plain(n):
        for i in range(n):
            x, y = batches[i % 64]
            loss = nn.functional.cross_entropy(plain_model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

    bare_state = new_state()
    bare_step = compile_bare(step, bare_state, cuda)

    def bare_run(n):
        for i in range(n):
            bare_step(bare_state, batches[i % 64])

    variants = {"plain eager": plain, "bare step": bare_run}
    compile_s = {}
    data = [batches[i % 64] for i in range(args.steps)]
    backend = "cudagraphs" if cuda else "inductor"
    for k in (int(v) for v in args.ks.split(",")):
        runner = ft.compile_step(step, steps_per_call=k, compile=backend, device=device)
        holder = {"state": new_state()}

        def run(n, runner=runner, holder=holder):
            holder["state"] = ft.fit(runner, holder["state"], data[:n], epochs=1,
                                     callbacks=[ft.Logging.quiet()])

        variants[f"fit K={k}"] = run
    for name, run in variants.items():  # first calls: compiles (and CUDA graph recordings)
        if name == "plain eager":
            continue
        t0 = time.perf_counter()
        k = int(name.split("=")[1]) if "=" in name else 1
        run(3 * k)
        sync()
        compile_s[name] = time.perf_counter() - t0
    times = {name: [] for name in variants}
    names = list(variants)
    for r in range(args.rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            sync()
            t0 = time.perf_counter()
            variants[name](args.steps)
            sync()
            times[name].append((time.perf_counter() - t0) / args.steps * 1e6)
    base = statistics.median(times["plain eager"])
    bare_us = statistics.median(times["bare step"])
    where = torch.cuda.get_device_name(device) if cuda else f"{torch.get_num_threads()} thread(s)"
    print(f"torch {torch.__version__}, {where}, load {os.getloadavg()[0]:.1f}, {args.rounds} "
          f"rounds x {args.steps} steps, 64 cycled pre-made batches")
    print(f"{'variant':<13}{'us/step':>9}{'vs plain':>10}{'vs bare':>9}{'compile s':>11}")
    for name in names:
        m = statistics.median(times[name])
        c = f"{compile_s[name]:.1f}" if name in compile_s else "-"
        print(f"{name:<13}{m:>9.1f}{m / base:>10.2f}{m / bare_us:>9.2f}{c:>11}")


if __name__ == "__main__":
    main()
