"""Per-step cost of functrain against plain PyTorch and Lightning, on the CPU, in one run.

    ./dev python benchmarks/step_overhead.py                 # ~6-10 min on 2 cores
    ./dev python benchmarks/step_overhead.py --quick         # smoke run, a few minutes
    ./dev python benchmarks/step_overhead.py --workloads tiny --rounds 9 --json out.json

Variants (one training step = forward + backward + AdamW update, lr 1e-3, weight decay 1e-2):
  (a) plain eager loop: nn.Module + torch.optim.AdamW(foreach=True)    <- the baseline
  (b) torch.compile(model) + torch.optim.AdamW(fused=True)
  (c) Lightning Trainer, no logging (skipped with a note when lightning is not installed)
  (d) functrain fit, compile="eager"
  (e) functrain fit, compile="inductor"
  (f) the bare compiled functional step, no fit: what a user writes by hand with torch.compile

Every variant starts from the same weights, sees the same pre-made in-memory batches and keeps
training across rounds, so all of them run the same trajectory (the "loss" column checks it).
Each round runs every variant for WINDOW + steps steps, in an order rotated each round, and
times only the last `steps`: `fit` and the Lightning Trainer start (and `fit` compiles) afresh
on each call, and their first window holds that start-up, reported apart as "start s".
Compile time is the latency of each variant's very first step ("1st step s"). Medians over
rounds; on 2 shared cores, noise from any other process is large, so read the medians.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import statistics
import time
import warnings

import torch
import torch.nn.functional as F
from torch import nn

import functrain as ft
from functrain._donation import remember_nodes, write_back

LR, WD = 1e-3, 1e-2
N_BATCHES = 16  # distinct batches, cycled
WORKLOADS = {  # name: (description, model factory, input shape, batch size, default steps)
    "mlp": ("MLP 784-512-512-10", lambda: nn.Sequential(
        nn.Linear(784, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 10)),
        (784,), 128, 200),
    # The PyTorch examples' MNIST Net, without its two dropouts (for every variant).
    "cnn": ("MNIST CNN, no dropout", lambda: nn.Sequential(
        nn.Conv2d(1, 32, 3), nn.ReLU(), nn.Conv2d(32, 64, 3), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(9216, 128), nn.ReLU(), nn.Linear(128, 10)),
        (1, 28, 28), 64, 50),
    "tiny": ("tiny MLP 784-64-10", lambda: nn.Sequential(
        nn.Linear(784, 64), nn.ReLU(), nn.Linear(64, 10)), (784,), 32, 1000),
}
TARGETS = {"mlp": 0.72, "cnn": 0.88, "tiny": 0.33}  # (e) / (a)
FIT_OVERHEAD_TARGET = 1.05  # (e) / (f)

# A variant is run(n, log_every) -> (t_call, marks, loss): it trains n more steps, `marks` lists
# (steps done, time.perf_counter()) wherever it can note them cheaply, `loss` is the mean loss
# over the last metric window (see last_window).


def plain(model, opt, batches, autocast=None):
    """(a) and (b): the loop everyone writes (optionally under CPU autocast, for (a:bf16))."""
    def run(n, log_every):
        marks, losses, last = [], [], last_window(n, log_every)
        t0 = time.perf_counter()
        for i, (x, y) in enumerate(cycle(batches, n), 1):
            with torch.autocast("cpu", dtype=autocast, enabled=autocast is not None):
                loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            marks.append((i, time.perf_counter()))
            if i > last:
                losses.append(loss.detach())
        return t0, marks, torch.stack(losses).mean().item()
    return run


def lightning(model, batches):
    """(c): a LightningModule, automatic optimization, a new Trainer per call."""
    import lightning as L

    logging.getLogger("lightning").setLevel(logging.ERROR)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", module="lightning")

    class Module(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.model = model
            # Made once, so Adam's state carries over between Trainer calls like the others'.
            self.opt = torch.optim.AdamW(model.parameters(), LR, weight_decay=WD, foreach=True)

        def training_step(self, batch, batch_idx):
            x, y = batch
            return F.cross_entropy(self.model(x), y)

        def configure_optimizers(self):
            return self.opt

    class Marks(L.Callback):
        def __init__(self, last):
            self.marks, self.losses, self.last = [], [], last

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            self.marks.append((batch_idx + 1, time.perf_counter()))
            if batch_idx >= self.last:
                self.losses.append(outputs["loss"])

    module = Module()

    def run(n, log_every):
        cb, t0 = Marks(last_window(n, log_every)), time.perf_counter()
        trainer = L.Trainer(max_steps=n, logger=False, enable_checkpointing=False,
                            enable_progress_bar=False, enable_model_summary=False,
                            accelerator="cpu", devices=1, callbacks=[cb])
        # (an iterator: Lightning reads a list as a list of dataloaders)
        trainer.fit(module, train_dataloaders=iter(cycle(batches, n)))
        return t0, cb.marks, torch.stack(cb.losses).mean().item()
    return run


def make_step(model, precision="32"):
    """The functional training step of (d), (e), (f) and (g)."""
    from functrain import precision as mp

    def step(state, batch):
        x, y = batch

        def loss_fn(params):
            logits, _ = ft.call(model, params, state.buffers, x)
            return F.cross_entropy(logits, y)

        if precision == "16-mixed":  # loss scaling, written with functrain.precision
            loss, grads = mp.value_and_grad(loss_fn)(state.params,
                                                     loss_scale=mp.get_loss_scale(state))
            return mp.apply_gradients(state, grads), {"loss": loss}
        grads, loss = torch.func.grad_and_value(loss_fn)(state.params)
        return state.apply_gradients(grads), {"loss": loss}
    return step


class FitMarks(ft.Callback):
    def on_run_start(self, loop):
        self.start, self.marks, self.loss = loop.step, [], None

    def on_log(self, loop, metrics):
        self.marks.append((loop.step - self.start, time.perf_counter()))
        self.loss = metrics["train/loss"]


def functrain_fit(model, batches, backend, precision="32"):
    """(d), (e) and (g): `ft.fit`, one call per round (the compiled runner is reused)."""
    step, state = make_step(model, precision), new_state(model)

    def run(n, log_every):
        nonlocal state
        cb, t0 = FitMarks(), time.perf_counter()
        state = ft.fit(step, state, cycle(batches, n), max_steps=n, compile=backend,
                       device="cpu", loggers=False, progress=False, summary=False,
                       log_every=log_every, callbacks=[cb], precision=precision)
        return t0, cb.marks, cb.loss
    return run


def functrain_bare(model, batches):
    """(f): the whole step in one torch.compile graph, updating the state in place."""
    step, state = make_step(model), new_state(model)

    def bare_step(state, batch):
        new, metrics = step(state, batch)
        write_back(state, new)  # copy the new tensors into the old ones, inside the graph
        return metrics["loss"]

    remember_nodes(state)  # write_back needs TrainState's field names, read outside the graph
    compiled = torch.compile(bare_step, fullgraph=True, dynamic=False)

    def run(n, log_every):
        marks, losses, last = [], [], last_window(n, log_every)
        t0 = time.perf_counter()
        for i, batch in enumerate(cycle(batches, n), 1):
            loss = compiled(state, batch)
            marks.append((i, time.perf_counter()))
            if i > last:
                losses.append(loss)
        return t0, marks, torch.stack(losses).mean().item()
    return run


def new_state(model):
    return ft.TrainState.create(model, ft.optim.adamw(LR, weight_decay=WD), seed=0)


def last_window(n, log_every):
    """Steps before fit's last metric window of an n-step call: the "loss" column is the mean
    loss over that window for every variant."""
    return n - (n % log_every or log_every)


def cycle(batches, n):
    """The first n batches of the endless cycle over `batches` (a list of references)."""
    return [batches[i % len(batches)] for i in range(n)]


def steady(t0, marks, skip):
    """(seconds per step after `skip` steps, start-up: the excess of the first `skip` steps)."""
    s0, t1 = next(m for m in marks if m[0] >= skip)
    s1, t2 = marks[-1]
    per_step = (t2 - t1) / (s1 - s0)
    return per_step, t1 - t0 - s0 * per_step


def bench(name, args, steps, window):
    desc, factory, shape, batch_size, _ = WORKLOADS[name]
    torch.manual_seed(0)
    model = factory()
    batches = [(torch.randn(batch_size, *shape), torch.randint(0, 10, (batch_size,)))
               for _ in range(N_BATCHES)]
    m = lambda: copy.deepcopy(model)  # same initial weights for everyone
    ma, mb = m(), m()
    variants = {
        "(a) eager + AdamW foreach": plain(
            ma, torch.optim.AdamW(ma.parameters(), LR, weight_decay=WD, foreach=True), batches),
        "(b) compile(model) + AdamW fused": plain(
            torch.compile(mb), torch.optim.AdamW(mb.parameters(), LR, weight_decay=WD,
                                                 fused=True), batches),
    }
    try:
        variants["(c) Lightning Trainer, no logging"] = lightning(m(), batches)
    except ImportError as e:
        print(f"(c) skipped: lightning is not importable ({e}); pip install lightning")
    variants["(d) functrain fit, eager"] = functrain_fit(m(), batches, "eager")
    variants["(e) functrain fit, inductor"] = functrain_fit(m(), batches, "inductor")
    variants["(f) bare compiled step, no fit"] = functrain_bare(m(), batches)
    if "bf16-mixed" in args.precision:
        mc = m()
        variants["(a:bf16) eager + autocast bf16 + AdamW foreach"] = plain(
            mc, torch.optim.AdamW(mc.parameters(), LR, weight_decay=WD, foreach=True), batches,
            autocast=torch.bfloat16)
    for mode in args.precision:
        variants[f"(g:{mode}) functrain fit, inductor"] = functrain_fit(
            m(), batches, "inductor", mode)

    print(f"\n== {name}: {desc}, batch {batch_size}; {args.rounds} rounds x {steps} steps "
          f"(+{window} untimed), {torch.get_num_threads()} threads", flush=True)
    first, loss = {}, {}
    # Warm-up, `window` steps each: compiles, and keeps fit's metric windows (aligned to the
    # global step) in line with the rounds' windows, so the "loss" column compares like with like.
    for v, run in variants.items():
        t0, marks, _ = run(window, 1)
        first[v] = marks[0][1] - t0
        print(f"  warm-up {v}: first step {first[v]:.2f} s", flush=True)
    rounds = {v: [] for v in variants}
    start = {v: [] for v in variants}
    names = list(variants)
    for r in range(args.rounds):
        for v in names[r % len(names):] + names[:r % len(names)]:
            t0, marks, loss[v] = variants[v](window + steps, window)
            per_step, startup = steady(t0, marks, window)
            rounds[v].append(per_step * 1e6)
            start[v].append(startup)

    med = {v: statistics.median(rounds[v]) for v in variants}
    base = med[names[0]]
    print(f"  {'variant':46s}{'µs/step':>10s}{'vs (a)':>8s}{'1st step s':>12s}"
          f"{'start s':>9s}{'loss':>9s}")
    for v in variants:
        print(f"  {v:46s}{med[v]:10.0f}{med[v] / base:8.2f}{first[v]:12.2f}"
              f"{statistics.median(start[v]):9.2f}{loss[v]:9.4f}")
    e, f = med["(e) functrain fit, inductor"], med["(f) bare compiled step, no fit"]
    targets = [(f"(e) <= {TARGETS[name]:.2f}x (a)", e / base, TARGETS[name]),
               (f"(e)/(f) <= {FIT_OVERHEAD_TARGET:.2f} (fit's own overhead)", e / f,
                FIT_OVERHEAD_TARGET)]
    for label, value, limit in targets:
        print(f"  target {label}: {value:.2f} {'met' if value <= limit else 'NOT met'}")
    return {"description": desc, "batch_size": batch_size, "steps": steps,
            "median_us": med, "ratio_to_a": {v: med[v] / base for v in med},
            "rounds_us": rounds, "first_step_s": first,
            "start_s": {v: statistics.median(s) for v, s in start.items()},
            "final_loss": loss, "fit_overhead": e / f,
            "targets": [{"target": t, "value": x, "met": x <= lim} for t, x, lim in targets]}


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--workloads", default="mlp,cnn,tiny", help="comma-separated: mlp,cnn,tiny")
    p.add_argument("--rounds", type=int, default=None,
                   help="timed rounds (default 5; 2 with --quick)")
    p.add_argument("--steps", type=int, default=None,
                   help="timed steps per round, rounded up to whole metric windows (50; 10 "
                   "with --quick) (default: mlp 200, cnn 50, tiny 1000; a tenth with --quick)")
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    p.add_argument("--quick", action="store_true", help="a short smoke run")
    p.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    p.add_argument("--precision", default="", help="comma list of fit precision modes to add "
                   "as variants (g), e.g. bf16-mixed,16-mixed,bf16-true; with bf16-mixed also "
                   "(a:bf16), plain eager under CPU autocast")
    args = p.parse_args()
    names = args.workloads.split(",")
    args.precision = [p for p in args.precision.split(",") if p]
    for name in names:
        if name not in WORKLOADS:
            p.error(f"--workloads: expected names from {','.join(WORKLOADS)}, got {name!r}")
    args.rounds = args.rounds or (2 if args.quick else 5)
    # fit reads its metrics every `window` steps (its default log_every, 50), and each round
    # leaves the first window untimed; --quick shortens it.
    window = 10 if args.quick else 50
    torch.set_num_threads(args.threads)

    t_start, results = time.perf_counter(), {}
    for name in names:
        steps = args.steps or WORKLOADS[name][4] // (10 if args.quick else 1)
        steps = -(-steps // window) * window  # whole windows, so fit's windows line up
        results[name] = bench(name, args, steps, window)
    wall = time.perf_counter() - t_start
    print(f"\ntotal {wall / 60:.1f} min; torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"torch": torch.__version__, "threads": args.threads,
                       "rounds": args.rounds, "window": window, "quick": args.quick,
                       "wall_s": wall, "workloads": results}, fh, indent=1)


if __name__ == "__main__":
    main()
