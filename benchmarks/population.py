"""Training N small models: one vmapped population `fit` vs N sequential fits vs a Python loop.

    python benchmarks/population.py                       # N = 1, 4, 16, 64
    python benchmarks/population.py --sizes 1,4,16 --steps 50 --rounds 1   # quick

Workload: N MLPs 40-128-128-10 (MNIST-1D-sized inputs; synthetic data, since only time is
measured), AdamW, batch 64, every member its own seed. Variants, each training all N models
for ``--steps`` steps on the same pre-made batches (cycled):

  (a) population: ONE ``ft.fit`` of ``ft.population.vmap(step)`` over a population of N
      (compile="auto": one inductor graph for the whole population; per_member=False, so the
      metric window holds mean/best only)
  (b) sequential: N ``ft.fit`` calls of the one-model step, one after another (compiled once:
      fit reuses the runner for the same step function)
  (c) Python loop: plain eager PyTorch, N ``nn.Module`` + N ``torch.optim.AdamW(foreach=True)``,
      each step loops over the N models (the baseline most people write)

Every fit uses compile="auto". Compilation is warm-up (done before timing, reported apart):
the one-model step is compiled once and reused by all N sequential fits, the population step
once per N. Rounds rotate the variants' order; medians over rounds. Reported: steady-state
time to train all N models, member-samples per second (N * batch * steps / time), the ratios
(b)/(a) and (c)/(a), and the compile-included ratio (b + its compile) / (a + its compile),
each variant charged its own compile once.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn

import functrain as ft

IN, HIDDEN, OUT, BATCH = 40, 128, 10, 64


def make() -> nn.Module:
    return nn.Sequential(nn.Linear(IN, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, HIDDEN), nn.ReLU(),
                         nn.Linear(HIDDEN, OUT))


def step(state, batch):
    x, y = batch

    def loss_fn(params):
        out, _ = ft.call(state.module, params, state.buffers, x)
        return nn.functional.cross_entropy(out, y)

    grads, loss = torch.func.grad_and_value(loss_fn)(state.params)
    return state.apply_gradients(grads), {"loss": loss}


# One population step per size: a runner's metric window is sized for its first population.
POP_STEPS: dict[int, object] = {}
FIT = dict(compile="auto")


def batches(n: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    return [(torch.randn(BATCH, IN, generator=g), torch.randint(0, OUT, (BATCH,), generator=g))
            for _ in range(n)]


class Cycle:
    """``steps`` batches, cycling over a short list (no data loading in the timing)."""

    def __init__(self, data: list, steps: int) -> None:
        self.data, self.steps = data, steps

    def __len__(self) -> int:
        return self.steps

    def __iter__(self):
        for i in range(self.steps):
            yield self.data[i % len(self.data)]


def tx():
    return ft.optim.adamw(1e-3, weight_decay=1e-2)


def run_population(n: int, data: Cycle, optimizer) -> float:
    pop = ft.population.create(make, optimizer, seeds=n)
    t = time.perf_counter()
    pop_step = POP_STEPS.setdefault(n, ft.population.vmap(step, per_member=False))
    pop = ft.fit(pop_step, pop, data, epochs=1, callbacks=[ft.Logging.quiet(len(data))], **FIT)
    float(pop.members.step.sum())
    return time.perf_counter() - t


def run_sequential(n: int, data: Cycle, optimizer) -> float:
    # The members of a population, as ordinary states: the same weights as (a), and one
    # shared module object (the step reads state.module; a new module object per model would
    # be a new guard for the compiled step, so every fit would compile again).
    init = ft.population.create(make, optimizer, seeds=n)
    states = [ft.population.select(init, i) for i in range(n)]
    t = time.perf_counter()
    for s in states:
        s = ft.fit(step, s, data, epochs=1, callbacks=[ft.Logging.quiet(len(data))], **FIT)
        float(s.step)
    return time.perf_counter() - t


def run_loop(n: int, data: Cycle) -> float:
    models, opts = [], []
    for seed in range(n):
        torch.manual_seed(seed)
        models.append(make())
        opts.append(torch.optim.AdamW(models[-1].parameters(), lr=1e-3, weight_decay=1e-2,
                                      foreach=True))
    t = time.perf_counter()
    for x, y in data:
        for m, o in zip(models, opts):
            o.zero_grad(set_to_none=True)
            nn.functional.cross_entropy(m(x), y).backward()
            o.step()
    return time.perf_counter() - t


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="1,4,16,64")
    p.add_argument("--steps", type=int, default=100, help="timed steps per model")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    sizes = [int(s) for s in args.sizes.split(",")]
    data = Cycle(batches(16), args.steps)
    optimizer = tx()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, MLP "
          f"{IN}-{HIDDEN}-{HIDDEN}-{OUT}, batch {BATCH}, {args.steps} steps per model, "
          f"{args.rounds} round(s), 16 pre-made batches cycled")
    t = time.perf_counter()
    run_sequential(1, Cycle(data.data, 3), optimizer)  # compiles the one-model step
    one_compile_s = time.perf_counter() - t
    print(f"warm-up: one-model step compiled in {one_compile_s:.1f} s")
    header = (f"{'N':>4} {'compile s':>10} {'(a) pop s':>10} {'(b) seq s':>10} "
              f"{'(c) loop s':>11} {'(a) smp/s':>11} {'(b) smp/s':>11} {'(c) smp/s':>11} "
              f"{'b/a':>6} {'c/a':>6} {'b/a+cmp':>8}")
    print(header)
    for n in sizes:
        t = time.perf_counter()
        run_population(n, Cycle(data.data, 3), optimizer)  # compiles the N-member graph
        compile_s = time.perf_counter() - t
        times: dict[str, list[float]] = {"a": [], "b": [], "c": []}
        variants = [("a", lambda n=n: run_population(n, data, optimizer)),
                    ("b", lambda n=n: run_sequential(n, data, optimizer)),
                    ("c", lambda n=n: run_loop(n, data))]
        for r in range(args.rounds):
            for name, fn in variants[r % 3:] + variants[:r % 3]:
                times[name].append(fn())
        med = {k: statistics.median(v) for k, v in times.items()}
        samples = n * BATCH * args.steps
        print(f"{n:>4} {compile_s:>10.1f} {med['a']:>10.2f} {med['b']:>10.2f} "
              f"{med['c']:>11.2f} {samples / med['a']:>11.0f} {samples / med['b']:>11.0f} "
              f"{samples / med['c']:>11.0f} {med['b'] / med['a']:>6.1f} "
              f"{med['c'] / med['a']:>6.1f} "
              f"{(med['b'] + one_compile_s) / (med['a'] + compile_s):>8.2f}", flush=True)


if __name__ == "__main__":
    main()
