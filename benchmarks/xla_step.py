"""Per-step time of functrain on XLA against the CPU runner and hand-written torch_xla, one run.

    ./dev --xla python benchmarks/xla_step.py             # XLA's CPU device (PJRT_DEVICE=CPU)
    ./dev --xla python benchmarks/xla_step.py --quick     # smoke run
    PJRT_DEVICE=TPU python benchmarks/xla_step.py         # on a TPU VM

Runs in the XLA environment (torch 2.9.0 + torch_xla 2.9.0), so every variant, the CPU ones
too, uses that torch. One step = forward + backward + AdamW (lr 1e-3), cross-entropy, on a
784-128-10 MLP with batches of 64 (the issue's reference workload) or the 784-512-512-10 MLP
with batches of 128 (``--workload mlp512``):

  (a) plain PyTorch on the CPU: nn.Module + torch.optim.AdamW(foreach=True), eager
  (b) functrain's CPU runner, compile="auto" (inductor)
  (c) hand-written torch_xla: the same eager loop on the XLA device + torch_xla.sync() per step
      (lazy tensors: the step is re-recorded every step and its graph found by hash)
  (d) functrain on XLA, compile="eager": the pure step in lazy tensor mode, runner syncs
  (e) functrain on XLA, compile="auto": the whole step traced once by Dynamo and compiled by
      torch_xla's openxla backend into one executable
  (f) the same pure step wrapped by hand in torch_xla.compile (torch_xla's other whole-step
      API: lazy tracing of the function with a sync at its end, graphs cached by hash)

Each round runs every variant for `steps` steps after `warmup` steps, in a rotated order; the
clock stops after torch_xla's queue drains (xm.wait_device_ops). Medians over rounds, ratios to
(a). Also printed: the XLA compilations (torch_xla's UncachedCompile count) during the timed
steps: 0 for openxla after warm-up; the lazy variants compile a graph variant now and then.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn

import functrain as ft
from functrain import _xla

WORKLOADS = {"mlp128": ((784, 128, 10), 64), "mlp512": ((784, 512, 512, 10), 128)}


def make_model(widths):
    layers = []
    for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
        layers += [nn.Linear(a, b)] + ([nn.ReLU()] if i < len(widths) - 2 else [])
    torch.manual_seed(0)
    return nn.Sequential(*layers)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--workload", default="mlp128", choices=sorted(WORKLOADS))
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--warmup", type=int, default=60,
                   help="untimed steps first (they include a metric read)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--quick", action="store_true", help="2 rounds of 50 steps")
    p.add_argument("--json", metavar="PATH")
    args = p.parse_args()
    if args.quick:
        args.rounds, args.steps = 2, 50
    torch.set_num_threads(args.threads)
    xla = _xla.device("xla")  # first: the XLA runtime must start before any backward pass
    widths, bs = WORKLOADS[args.workload]
    g = torch.Generator().manual_seed(1)
    cpu_batches = [(torch.randn(bs, widths[0], generator=g),
                    torch.randint(0, widths[-1], (bs,), generator=g)) for _ in range(16)]
    xla_batches = [(x.to(xla), y.to(xla)) for x, y in cpu_batches]
    model = make_model(widths)

    def step(state, batch):
        x, y = batch

        def loss_fn(params):
            out, _ = ft.call(model, params, state.buffers, x)
            return F.cross_entropy(out, y)

        grads, loss = torch.func.grad_and_value(loss_fn)(state.params)
        return state.apply_gradients(grads), {"loss": loss}

    def plain(device, batches):
        m = make_model(widths).to(device)
        opt = torch.optim.AdamW(m.parameters(), lr=1e-3, foreach=True)
        on_xla = device.type == "xla"

        def run(i):
            x, y = batches[i % 16]
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(m(x), y).backward()
            opt.step()
            if on_xla:
                _xla.sync()
        return run

    def functrain(device, compile, batches):
        run_step = ft.compile_step(step, device=device, compile=compile)
        box = [ft.TrainState.create(make_model(widths), ft.optim.adamw(1e-3))]

        def run(i):
            box[0], _ = run_step(box[0], batches[i % 16])
            if i % 50 == 49:  # read the metric window as fit would, once per 50 steps
                run_step.read_metrics()
        return run

    def xla_compiled(batches):
        """The same pure step, wrapped by hand in torch_xla.compile (no functrain runner)."""
        import torch_xla

        fn = torch_xla.compile(step)
        box = [ft.tree.map(lambda x: x.to(xla),
                           ft.TrainState.create(make_model(widths), ft.optim.adamw(1e-3)))]

        def run(i):
            box[0], _ = fn(box[0], batches[i % 16])
        return run

    variants = {
        "(a) plain eager, CPU": plain(torch.device("cpu"), cpu_batches),
        "(b) functrain CPU runner (inductor)": functrain("cpu", "auto", cpu_batches),
        "(c) hand-written torch_xla (lazy)": plain(xla, xla_batches),
        "(d) functrain XLA, compile='eager' (lazy)": functrain("xla", "eager", xla_batches),
        "(e) functrain XLA, compile='auto' (openxla)": functrain("xla", "auto", xla_batches),
        "(f) pure step in torch_xla.compile, no runner": xla_compiled(xla_batches),
    }
    first, times, compiles = {}, {k: [] for k in variants}, {k: 0 for k in variants}
    for name, run in variants.items():
        t = time.perf_counter()
        for i in range(args.warmup):
            run(i)
        _xla.wait()
        first[name] = time.perf_counter() - t
    names = list(variants)
    for r in range(args.rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            run = variants[name]
            _xla.wait()
            c0, t = _xla.compile_count(), time.perf_counter()
            for i in range(args.steps):
                run(i)
            _xla.wait()
            times[name].append((time.perf_counter() - t) / args.steps)
            compiles[name] += _xla.compile_count() - c0
    base = statistics.median(times[names[0]])
    print(f"workload {args.workload}: MLP {'-'.join(map(str, widths))}, batch {bs}; "
          f"torch {torch.__version__}, XLA device {xla} ({_xla_kind()}); "
          f"{args.rounds} rounds x {args.steps} steps, {args.threads} threads")
    print(f"{'variant':46s} {'ms/step':>8s} {'x (a)':>6s} {'warm-up s':>9s} {'XLA compiles':>12s}")
    rows = []
    for name in names:
        med = statistics.median(times[name])
        rows.append({"variant": name, "ms_per_step": med * 1e3, "ratio": med / base,
                     "warmup_s": first[name], "xla_compiles_timed": compiles[name]})
        print(f"{name:46s} {med * 1e3:8.3f} {med / base:6.2f} {first[name]:9.1f} "
              f"{compiles[name]:12d}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"workload": args.workload, "rows": rows, "args": vars(args)}, f, indent=1)


def _xla_kind() -> str:
    import torch_xla.runtime as xr

    return xr.device_type()


if __name__ == "__main__":
    main()
