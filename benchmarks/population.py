"""Training N small models: one vmapped population `fit` vs N sequential fits vs a Python loop.

    python benchmarks/population.py                       # N = 1, 4, 16, 64; mlp128
    python benchmarks/population.py --models mlp32,mlp64,mlp128,cnn --sizes 16 --threads 1
    python benchmarks/population.py --sizes 1,4,16 --steps 50 --rounds 1   # quick

Workloads (``--models``, MNIST-1D-sized inputs of 40 values, 10 classes; synthetic data, since
only time is measured), AdamW, batch 64, every member its own seed:

  mlpH  an MLP 40-H-H-10 (``mlp128`` is the default; any width H, e.g. mlp32, mlp64)
  cnn   the MNIST-1D paper's CNN of examples/mnist1d.py (three strided Conv1d of 25
        channels, a Linear read-out; 5.2k params)
  cnnmm the same CNN (same parameters, same outputs), its convolutions computed as
        unfold + matmul: vmap then batches them into ``bmm`` instead of oneDNN's grouped
        convolutions (``groups=N``), which cost as much per member as N single convolutions

Variants, each training all N models for ``--steps`` steps on the same pre-made batches
(cycled):

  (a) population: ONE ``ft.fit`` of ``ft.population.vmap(step)`` over a population of N
      (compile="inductor": one graph for the whole population; per_member=False, so the
      metric window holds mean/best only)
  (b) sequential: N ``ft.fit`` calls of the one-model step, one after another (compiled once:
      fit reuses the runner for the same step function)
  (c) Python loop: plain eager PyTorch, N ``nn.Module`` + N ``torch.optim.AdamW(foreach=True)``,
      each step loops over the N models (the baseline most people write)

Every fit uses compile="inductor" (what "auto" runs on the CPU once compiled; a cold "auto"
would train eagerly while compiling in the background). Compilation is warm-up (done before
timing, reported apart): the one-model step is compiled once per workload and reused by all N
sequential fits, the population step once per workload and N. Rounds rotate the variants'
order; medians over rounds. Reported per workload and N: steady-state time to train all N
models, member-samples per second (N * batch * steps / time), the ratios (b)/(a) and (c)/(a),
the compile-included ratio (b + its compile) / (a + its compile) (each variant charged its own
compile once), the time of one population step and of one one-model step, and the matmul/conv
GFLOP/s of (a) and (b) (FLOPs of one member's forward and backward, counted by
``torch.utils.flop_counter``), next to the peak of one large ``mm`` on the same threads, to
tell a compute-bound population step from an overhead-bound one. With two or more sizes, a last
line per workload gives the time each further member adds to the population step and the bound
it puts on (b)/(a): one model's step time over that per-member time.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import time

import torch
from torch import nn

import functrain as ft

IN, OUT, BATCH = 40, 10, 64
HERE = os.path.dirname(os.path.abspath(__file__))


def _conv_net() -> type[nn.Module]:
    """examples/mnist1d.py's ConvNet (imported by path; its data loader is not used)."""
    path = os.path.join(HERE, "..", "examples", "mnist1d.py")
    spec = importlib.util.spec_from_file_location("mnist1d_example", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.ConvNet


def _conv_as_matmul(conv: nn.Conv1d, h: torch.Tensor) -> torch.Tensor:
    """``conv(h)`` as unfold + matmul (zero padding, no dilation, one group)."""
    (k,), (s,), (p,) = conv.kernel_size, conv.stride, conv.padding
    h = nn.functional.pad(h, (p, p))
    n = (h.shape[2] - k) // s + 1
    # k strided slices, not Tensor.unfold: unfold's backward has no vmap batching rule
    cols = torch.stack([h[:, :, j:j + s * (n - 1) + 1:s] for j in range(k)], 3)
    cols = cols.permute(0, 2, 1, 3).flatten(2)             # (batch, L, C * k)
    return (cols @ conv.weight.flatten(1).t() + conv.bias).transpose(1, 2)


def _conv_net_mm() -> type[nn.Module]:
    base = _conv_net()

    class ConvNetMM(base):
        """examples/mnist1d.py's ConvNet, its convolutions computed as unfold + matmul."""

        def forward(self, x):
            h = x.unsqueeze(1)
            for conv in (self.conv1, self.conv2, self.conv3):
                h = _conv_as_matmul(conv, h).relu()
            return self.linear(h.flatten(1))

    return ConvNetMM


def factory(model: str):
    """A zero-argument module factory for a workload name (``mlpH``, ``cnn`` or ``cnnmm``)."""
    if model == "cnn":
        return _conv_net()
    if model == "cnnmm":
        return _conv_net_mm()
    if model.startswith("mlp") and model[3:].isdigit():
        h = int(model[3:])
        return lambda: nn.Sequential(nn.Linear(IN, h), nn.ReLU(), nn.Linear(h, h), nn.ReLU(),
                                     nn.Linear(h, OUT))
    raise SystemExit(f"--models: expected mlpH (e.g. mlp64), cnn or cnnmm, got {model!r}")


def make_step():
    """A new one-model step function (one per workload: fit keeps a runner per function)."""

    def step(state, batch):
        x, y = batch

        def loss_fn(params):
            out, _ = ft.call(state.module, params, state.buffers, x)
            return nn.functional.cross_entropy(out, y)

        grads, loss = torch.func.grad_and_value(loss_fn)(state.params)
        return state.apply_gradients(grads), {"loss": loss}

    return step


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


def member_flops(make, batch) -> int:
    """Matmul and conv FLOPs of one member's forward and backward on one batch."""
    from torch.utils.flop_counter import FlopCounterMode

    torch.manual_seed(0)
    model = make()
    x, y = batch
    with FlopCounterMode(display=False) as counter:
        nn.functional.cross_entropy(model(x), y).backward()
    return counter.get_total_flops()


def mm_peak_gflops() -> float:
    """GFLOP/s of a 1024^3 float32 ``mm`` on the current threads (best of 5)."""
    a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)
    a @ b
    best = min(_timed(lambda: a @ b) for _ in range(5))
    return 2 * 1024**3 / best / 1e9


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


class Workload:
    """One model: its factory, its one-model step, and a population step per N."""

    def __init__(self, name: str, optimizer) -> None:
        self.name, self.make, self.optimizer = name, factory(name), optimizer
        self.step = make_step()
        self.pop_steps: dict[int, object] = {}  # a population step's window is sized for one N

    def population(self, n: int, data: Cycle) -> float:
        pop = ft.population.create(self.make, self.optimizer, seeds=n)
        t = time.perf_counter()
        pop_step = self.pop_steps.setdefault(n, ft.population.vmap(self.step, per_member=False))
        pop = ft.fit(pop_step, pop, data, epochs=1, callbacks=[ft.Logging.quiet(len(data))],
                     compile="inductor")
        float(pop.members.step.sum())
        return time.perf_counter() - t

    def sequential(self, n: int, data: Cycle) -> float:
        # The members of a population, as ordinary states: the same weights as (a), and one
        # shared module object (the step reads state.module; a new module object per model
        # would be a new guard for the compiled step, so every fit would compile again).
        init = ft.population.create(self.make, self.optimizer, seeds=n)
        states = [ft.population.select(init, i) for i in range(n)]
        t = time.perf_counter()
        for s in states:
            s = ft.fit(self.step, s, data, epochs=1, callbacks=[ft.Logging.quiet(len(data))],
                       compile="inductor")
            float(s.step)
        return time.perf_counter() - t

    def loop(self, n: int, data: Cycle) -> float:
        models, opts = [], []
        for seed in range(n):
            torch.manual_seed(seed)
            models.append(self.make())
            opts.append(torch.optim.AdamW(models[-1].parameters(), lr=1e-3, weight_decay=1e-2,
                                          foreach=True))
        t = time.perf_counter()
        for x, y in data:
            for m, o in zip(models, opts):
                o.zero_grad(set_to_none=True)
                nn.functional.cross_entropy(m(x), y).backward()
                o.step()
        return time.perf_counter() - t


HEADER = (f"{'model':>7} {'N':>3} {'cmp a s':>7} {'(a) s':>7} {'(b) s':>7} {'(c) s':>7} "
          f"{'(a) smp/s':>10} {'(b) smp/s':>10} {'(c) smp/s':>10} {'b/a':>5} {'c/a':>5} "
          f"{'b/a+cmp':>7} {'pop us':>7} {'one us':>7} {'a GF/s':>7} {'b GF/s':>7}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="mlp128",
                   help="comma-separated: mlpH (any H), cnn, cnnmm")
    p.add_argument("--sizes", default="1,4,16,64")
    p.add_argument("--steps", type=int, default=100, help="timed steps per model")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    sizes = [int(s) for s in args.sizes.split(",")]
    data = Cycle(batches(16), args.steps)
    optimizer = tx()
    peak = mm_peak_gflops()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {BATCH}, "
          f"AdamW, {args.steps} steps per model, {args.rounds} round(s), 16 pre-made batches "
          f"cycled; load average {os.getloadavg()[0]:.1f}; 1024^3 mm peak {peak:.0f} GFLOP/s")
    for name in args.models.split(","):
        w = Workload(name, optimizer)
        if name == "cnnmm":  # the same function as the CNN, computed another way
            torch.manual_seed(0)
            conv, mm = _conv_net()(), w.make()
            mm.load_state_dict(conv.state_dict())
            x = data.data[0][0]
            torch.testing.assert_close(mm(x), conv(x), rtol=1e-5, atol=1e-5)
        flops = member_flops(w.make, data.data[0])
        params = sum(p.numel() for p in w.make().parameters())
        t = time.perf_counter()
        w.sequential(1, Cycle(data.data, 3))  # compiles the one-model step
        one_compile_s = time.perf_counter() - t
        print(f"\n{name}: {params} params, {flops / 1e6:.2f} MFLOP (matmul/conv, fwd+bwd) per "
              f"member-step; one-model step compiled in {one_compile_s:.1f} s")
        print(HEADER)
        pop_us: dict[int, float] = {}
        one_us: list[float] = []
        for n in sizes:
            t = time.perf_counter()
            w.population(n, Cycle(data.data, 3))  # compiles the N-member graph
            compile_s = time.perf_counter() - t
            times: dict[str, list[float]] = {"a": [], "b": [], "c": []}
            variants = [("a", lambda n=n, w=w: w.population(n, data)),
                        ("b", lambda n=n, w=w: w.sequential(n, data)),
                        ("c", lambda n=n, w=w: w.loop(n, data))]
            for r in range(args.rounds):
                for key, fn in variants[r % 3:] + variants[:r % 3]:
                    times[key].append(fn())
            med = {k: statistics.median(v) for k, v in times.items()}
            samples = n * BATCH * args.steps
            work = n * flops * args.steps / 1e9
            print(f"{name:>7} {n:>3} {compile_s:>7.1f} {med['a']:>7.2f} {med['b']:>7.2f} "
                  f"{med['c']:>7.2f} {samples / med['a']:>10.0f} {samples / med['b']:>10.0f} "
                  f"{samples / med['c']:>10.0f} {med['b'] / med['a']:>5.1f} "
                  f"{med['c'] / med['a']:>5.1f} "
                  f"{(med['b'] + one_compile_s) / (med['a'] + compile_s):>7.2f} "
                  f"{med['a'] / args.steps * 1e6:>7.0f} "
                  f"{med['b'] / (n * args.steps) * 1e6:>7.0f} {work / med['a']:>7.1f} "
                  f"{work / med['b']:>7.1f}", flush=True)
            pop_us[n] = med["a"] / args.steps * 1e6
            one_us.append(med["b"] / (n * args.steps) * 1e6)
        if len(pop_us) > 1:
            lo, hi = min(pop_us), max(pop_us)
            member = (pop_us[hi] - pop_us[lo]) / (hi - lo)
            one = statistics.median(one_us)
            print(f"{name}: each further member adds {member:.0f} us to the population step "
                  f"(N={lo} -> {hi}); one model's step takes {one:.0f} us, so (b)/(a) tends to "
                  f"at most {one / member:.1f} as N grows; at the mm peak one member's FLOPs "
                  f"take {flops / peak / 1e3:.0f} us")


if __name__ == "__main__":
    main()
