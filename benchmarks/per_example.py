"""A DP-SGD training step: functrain (per-example grads by vmap, compiled) vs opacus.

    python benchmarks/per_example.py                   # MLP and CNN, 50 timed steps each
    python benchmarks/per_example.py --steps 20 --rounds 1 --workloads mlp   # quick

One step = per-example gradients, clipping to norm 1.0, Gaussian noise (multiplier 1.1),
mean, SGD update, on the same model and pre-made batches (cycled):

  (a) opacus: ``GradSampleModule`` + ``DPOptimizer(torch.optim.SGD)``, eager  <- the baseline
  (b) functrain: ``ft.privacy.dp_grads`` inside a step run by ``ft.compile_step`` with
      compile="inductor" (one graph: per-example grads, clipping, keyed noise, update)

  (c) the keyed noise draw of (b) alone: ``ft.random.normal(key, (P,))`` for the model's P
      parameters, compiled (where (b)'s time goes: the rest, (b) - (c), is per-example
      gradients, clipping and the update)

Workloads: ``mlp`` (784-256-256-10, batch 64), ``cnn`` (conv 1-16-32 on 28x28 with GroupNorm,
batch 64). Compilation is warm-up, reported apart. Rounds rotate the order; reported:
median ms per step, the ratio (b)/(a) (goal <= 0.7) and (b - c)/(a), the ratio without the
noise draw.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
import warnings

import torch
from torch import nn

import functrain as ft

CLIP, NOISE, LR, BATCH = 1.0, 1.1, 0.05, 64


def workload(name: str):
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    if name == "mlp":
        model = nn.Sequential(nn.Flatten(), nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 256),
                              nn.ReLU(), nn.Linear(256, 10))
    else:
        model = nn.Sequential(nn.Conv2d(1, 16, 5, stride=2, padding=2), nn.ReLU(),
                              nn.GroupNorm(4, 16), nn.Conv2d(16, 32, 3, stride=2, padding=1),
                              nn.ReLU(), nn.Flatten(), nn.Linear(32 * 7 * 7, 10))
    data = [(torch.randn(BATCH, 1, 28, 28, generator=g), torch.randint(0, 10, (BATCH,),
                                                                       generator=g))
            for _ in range(8)]
    return model, data


def opacus_runner(model: nn.Module):
    from opacus import GradSampleModule
    from opacus.optimizers import DPOptimizer

    gsm = GradSampleModule(copy.deepcopy(model))
    opt = DPOptimizer(torch.optim.SGD(gsm.parameters(), lr=LR), noise_multiplier=NOISE,
                      max_grad_norm=CLIP, expected_batch_size=BATCH)

    def run(batch):
        x, y = batch
        opt.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(gsm(x), y).backward()
        opt.step()

    return run


def functrain_runner(model: nn.Module):
    def loss_fn(params, x, y):
        out, _ = ft.call(model, params, {}, x)
        return nn.functional.cross_entropy(out, y)

    private = ft.privacy.dp_grads(loss_fn, l2_norm_clip=CLIP, noise_multiplier=NOISE)

    def step(state, batch):
        key = ft.random.fold_in(state.rng, state.step)
        grads, loss = private(state.params, key, *batch)
        return state.apply_gradients(grads), {"loss": loss}

    compiled = ft.compile_step(step, compile="inductor")
    box = [ft.TrainState.create(model, ft.optim.sgd(LR))]

    def run(batch):
        box[0], _ = compiled(box[0], batch)

    return run


def draw_runner(model: nn.Module):
    size = sum(p.numel() for p in model.parameters())
    draw = torch.compile(lambda key: ft.random.normal(key, (size,)), fullgraph=True)
    key = [ft.random.key(0)]

    def run(batch):
        del batch
        key[0] = ft.random.fold_in(key[0], 1)
        draw(key[0])

    return run


def timed(run, data, steps: int) -> float:
    t = time.perf_counter()
    for i in range(steps):
        run(data[i % len(data)])
    return (time.perf_counter() - t) / steps * 1e3


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workloads", default="mlp,cnn")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")  # opacus' secure-RNG and hook notices
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {BATCH}, "
          f"{args.steps} steps per round, {args.rounds} rounds, 8 pre-made batches cycled")
    print(f"{'workload':>8} {'compile s':>10} {'(a) opacus ms':>14} {'(b) functrain ms':>17} "
          f"{'(c) draw ms':>12} {'b/a':>6} {'(b-c)/a':>8}")
    for name in args.workloads.split(","):
        model, data = workload(name)
        runners = {"a": opacus_runner(model), "b": functrain_runner(model),
                   "c": draw_runner(model)}
        t = time.perf_counter()
        runners["b"](data[0])  # compile
        compile_s = time.perf_counter() - t
        for r in runners.values():
            for b in data[:3]:
                r(b)  # warm-up
        times: dict[str, list[float]] = {"a": [], "b": [], "c": []}
        order = ["a", "b", "c"]
        for r in range(args.rounds):
            for k in order[r % 3:] + order[:r % 3]:
                times[k].append(timed(runners[k], data, args.steps))
        med = {k: statistics.median(v) for k, v in times.items()}
        print(f"{name:>8} {compile_s:>10.1f} {med['a']:>14.2f} {med['b']:>17.2f} "
              f"{med['c']:>12.2f} {med['b'] / med['a']:>6.2f} "
              f"{(med['b'] - med['c']) / med['a']:>8.2f}", flush=True)


if __name__ == "__main__":
    main()
