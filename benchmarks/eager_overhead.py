"""Where `fit`'s eager per-step time goes, on the main job's step (the MNIST-1D CNN, batch 100).

Times (wall and this thread's CPU time), in rotated rounds (medians), one training step of:

- ``plain``: ``nn.Module`` + ``torch.optim.Adam`` (its default: on the CPU, the
  per-parameter loop, not foreach), ``zero_grad``/``backward``/``step``
- ``plain+acc``: the same plus an accuracy count kept on the device (what fit's metrics do)
- ``fwd-bwd``: only ``torch.func.grad_and_value`` over ``ft.call`` (no optimizer);
  ``fwd-bwd ft``: the same with ``ft.grad_and_value``
- ``plain fwd-bwd``, ``plain opt``: the plain loop's ``zero_grad`` + forward + ``backward``,
  and its ``opt.step()`` alone
- ``opt``: only ``state.apply_gradients`` (functrain's Adam, eager) on fixed gradients;
  ``opt per-leaf``: the same with the eager foreach path turned off
- ``bare``: the example's step function called directly, no runner
- ``runner``: ``ft.compile_step(step, compile="eager")``
- ``fit``: ``ft.fit(..., compile="eager")`` (``ft.Logging.quiet()``: no loggers, progress bar
  or summary), per step

``bare``, ``runner`` and ``fit`` come twice: with ``torch.func.grad_and_value`` in the step, and
(`` ft``) with ``ft.grad_and_value``, as examples/mnist1d.py writes it.

and counts, per step, the Python function calls (``sys.setprofile`` "call" events) and the
C-function calls ("c_call") of each variant; ``--cprofile`` prints the top entries of a
cProfile of one variant (``--profile-variant``, default ``fit ft``).

    python benchmarks/eager_overhead.py [--rounds 7] [--steps 100] [--threads 1] [--cprofile]
        [--only "fit,fit ft"]
"""

from __future__ import annotations

import argparse
import cProfile
import importlib.util
import os
import pstats
import statistics
import sys
import time

import torch
from torch import nn

import functrain as ft
from functrain.optim import _foreach

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _example():
    spec = importlib.util.spec_from_file_location(
        "_example_mnist1d", os.path.join(ROOT, "examples", "mnist1d.py"))
    ex = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ex)
    return ex


def build(batch_size: int = 100):
    ex = _example()
    torch.manual_seed(0)
    (x, y), _ = ex.load_mnist1d()
    batches = [(x[i:i + batch_size], y[i:i + batch_size])
               for i in range(0, len(x) - batch_size + 1, batch_size)]
    return ex, batches


def make_variants(ex, batches, steps: int):
    variants = {}

    # -- plain PyTorch ------------------------------------------------------------------------
    model = ex.ConvNet()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)

    def plain(n, acc=False):
        correct = torch.zeros((), dtype=torch.int64)
        for i in range(n):
            x, y = batches[i % len(batches)]
            logits = model(x)
            loss = nn.functional.cross_entropy(logits, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if acc:
                correct += (logits.detach().argmax(1) == y).sum()
    variants["plain"] = plain
    variants["plain+acc"] = lambda n: plain(n, acc=True)

    def plain_fwd_bwd(n):
        for i in range(n):
            x, y = batches[i % len(batches)]
            model.zero_grad(set_to_none=True)
            nn.functional.cross_entropy(model(x), y).backward()
    variants["plain fwd-bwd"] = plain_fwd_bwd

    def plain_opt(n):
        for _ in range(n):
            opt.step()
    variants["plain opt"] = plain_opt

    # -- functional pieces --------------------------------------------------------------------
    fmodel = ex.ConvNet()
    grad_fns = {"": torch.func.grad_and_value, " ft": ft.grad_and_value}

    def make_step(grad_and_value):
        def step(state, batch):
            x, y = batch

            def loss_fn(params):
                logits, _ = ft.call(fmodel, params, state.buffers, x)
                return nn.functional.cross_entropy(logits, y), logits

            grads, (loss, logits) = grad_and_value(loss_fn, has_aux=True)(state.params)
            return state.apply_gradients(grads), {
                "loss": loss, "accuracy": ft.metrics.Accuracy.from_logits(logits, y)}
        return step

    def new_state():
        return ft.TrainState.create(fmodel, ft.optim.adam(1e-2), seed=0)

    fixed = new_state()
    for tag, gv in grad_fns.items():
        def fwd_bwd(n, gv=gv):
            for i in range(n):
                x, y = batches[i % len(batches)]

                def loss_fn(params, x=x, y=y):
                    logits, _ = ft.call(fmodel, params, fixed.buffers, x)
                    return nn.functional.cross_entropy(logits, y)

                gv(loss_fn)(fixed.params)
        variants["fwd-bwd" + tag] = fwd_bwd

    grads = {k: torch.randn_like(v) * 1e-3 for k, v in fixed.params.items()}

    def opt_only(n):
        s = new_state()
        for _ in range(n):
            s = s.apply_gradients(grads)
    variants["opt"] = opt_only

    def opt_per_leaf(n):  # the same, with the eager foreach path turned off
        leaves = _foreach.leaves
        _foreach.leaves = lambda *trees: None
        try:
            opt_only(n)
        finally:
            _foreach.leaves = leaves
    variants["opt per-leaf"] = opt_per_leaf

    def stepping(step_fn):
        """n steps of ``step_fn`` per call, carrying the state from call to call."""
        holder = {"state": new_state()}

        def run(n):
            s = holder["state"]
            for i in range(n):
                s, _ = step_fn(s, batches[i % len(batches)])
            holder["state"] = s
        return run

    for tag, gv in grad_fns.items():
        step = make_step(gv)
        variants["bare" + tag] = stepping(step)
        variants["runner" + tag] = stepping(ft.compile_step(step, compile="eager"))

        fstate = {"state": new_state()}

        def fit(n, step=step, fstate=fstate):
            fstate["state"] = ft.fit(step, fstate["state"],
                                     [batches[i % len(batches)] for i in range(n)], epochs=1,
                                     compile="eager", callbacks=[ft.Logging.quiet()])
        variants["fit" + tag] = fit
    return variants


def count_calls(fn, n: int) -> tuple[float, float]:
    counts = {"call": 0, "c_call": 0}

    def prof(frame, event, arg):
        if event in counts:
            counts[event] += 1

    sys.setprofile(prof)
    try:
        fn(n)
    finally:
        sys.setprofile(None)
    return counts["call"] / n, counts["c_call"] / n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--cprofile", action="store_true")
    parser.add_argument("--profile-variant", default="fit ft")
    parser.add_argument("--only", default=None,
                        help="comma-separated variants to time (plain is always timed)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    ex, batches = build()
    variants = make_variants(ex, batches, args.steps)
    if args.only:
        keep = {"plain", *args.only.split(",")}
        variants = {k: v for k, v in variants.items() if k in keep}
    for fn in variants.values():  # warm-up
        fn(10)
    times: dict[str, list[float]] = {k: [] for k in variants}
    cpu: dict[str, list[float]] = {k: [] for k in variants}
    names = list(variants)
    for r in range(args.rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            t0, c0 = time.perf_counter(), time.thread_time()
            variants[name](args.steps)
            times[name].append((time.perf_counter() - t0) / args.steps * 1e6)
            # CPU time of this thread too: on a shared machine it leaves out the time the
            # process waited for a core (other processes still share caches and memory).
            cpu[name].append((time.thread_time() - c0) / args.steps * 1e6)
    calls = {k: count_calls(fn, 20) for k, fn in variants.items()}
    base = statistics.median(times["plain"])
    cpu_base = statistics.median(cpu["plain"])
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), load average "
          f"{os.getloadavg()[0]:.1f}, {args.rounds} rounds x {args.steps} steps, 40 cycled "
          "pre-made batches of 100")
    print(f"{'variant':<14}{'us/step':>9}{'vs plain':>10}{'cpu us':>9}{'vs plain':>10}"
          f"{'py calls':>10}{'c calls':>9}")
    for k in names:
        m, c = statistics.median(times[k]), statistics.median(cpu[k])
        print(f"{k:<14}{m:>9.0f}{m / base:>10.2f}{c:>9.0f}{c / cpu_base:>10.2f}"
              f"{calls[k][0]:>10.0f}{calls[k][1]:>9.0f}")
    if args.cprofile:
        pr = cProfile.Profile()
        pr.enable()
        variants[args.profile_variant](200)
        pr.disable()
        pstats.Stats(pr).sort_stats("tottime").print_stats(25)


if __name__ == "__main__":
    main()
