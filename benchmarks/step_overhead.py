"""Per-step cost of functrain against plain PyTorch and Lightning, on the CPU or a GPU, in one run.

    ./dev python benchmarks/step_overhead.py                 # ~6-10 min on 2 cores
    ./dev python benchmarks/step_overhead.py --quick         # smoke run, a few minutes
    ./dev python benchmarks/step_overhead.py --workloads tiny --rounds 9 --json out.json
    python benchmarks/step_overhead.py --device cuda --json cuda.json   # one GPU, a few min

Variants (one training step = forward + backward + AdamW update, lr 1e-3, weight decay 1e-2):
  (a) plain eager loop: nn.Module + torch.optim.AdamW(foreach=True)    <- the baseline
  (b) torch.compile(model) + torch.optim.AdamW(fused=True)
  (b2) on CUDA only: torch.compile(model, mode="reduce-overhead") (CUDA graphs) + AdamW fused
  (c) Lightning Trainer, no logging (skipped with a note when lightning is not installed)
  (d) functrain fit, compile="eager"
  (e) functrain fit with the backend compile="auto" runs once its step is compiled:
      "inductor" on the CPU, "cudagraphs" (inductor + CUDA graphs) on CUDA (named explicitly:
      on a cold CPU start "auto" trains eagerly while it compiles in the background)
  (f) the bare compiled functional step, no fit: what a user writes by hand with torch.compile
      (on CUDA with mode="reduce-overhead", the same CUDA graphs as (e))

Every variant starts from the same weights, sees the same pre-made in-memory batches and keeps
training across rounds, so all of them run the same trajectory (the "loss" column checks it).
Each round runs every variant for WINDOW + steps steps, in an order rotated each round, and
times only the last `steps`: `fit` and the Lightning Trainer start (and `fit` compiles) afresh
on each call, and their first window holds that start-up, reported apart as "start s".
Compile time is the latency of each variant's very first step ("1st step s"). Medians over
rounds; on 2 shared cores, noise from any other process is large, so read the medians.

With --device cuda the models, optimizer states and batches live on the GPU, and every clock
reading at the ends of a timed region comes after torch.cuda.synchronize() (never inside a
baseline's step loop); a variant that fails is reported and dropped, the others go on.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import gc
import json
import logging
import statistics
import sys
import time
import traceback
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
TARGETS = {"mlp": 0.72, "cnn": 0.88, "tiny": 0.33}  # (e) / (a), on a 2-core CPU only
FIT_OVERHEAD_TARGET = 1.05  # (e) / (f)

# A variant is run(n, log_every) -> (t_call, marks, loss): it trains n more steps, `marks` lists
# (steps done, clock()) at the steps in mark_points(n, log_every), `loss` is the mean loss over
# the last metric window (see last_window).

_sync = None  # torch.cuda.synchronize with --device cuda


def clock():
    """time.perf_counter(), after the device has finished all queued work (CUDA)."""
    if _sync is not None:
        _sync()
    return time.perf_counter()


def mark_points(n, log_every):
    """The steps at which a variant reads the clock: the first (compile latency), the end of
    the untimed first window and the last. Only these sync the device."""
    return sorted({1, min(log_every, n), n})


def plain(model, opt, batches, autocast=None, device_type="cpu"):
    """(a) and (b): the loop everyone writes (optionally under autocast, for (a:bf16))."""
    if autocast is None:
        ctx = contextlib.nullcontext  # no autocast context at all in the baseline's loop
    else:
        def ctx():
            return torch.autocast(device_type, dtype=autocast)

    def run(n, log_every):
        marks, losses, last, done = [], [], last_window(n, log_every), 0
        todo = cycle(batches, n)
        t0 = clock()
        for stop in mark_points(n, log_every):
            for i in range(done, stop):  # no clock and no device sync in here
                x, y = todo[i]
                with ctx():
                    loss = F.cross_entropy(model(x), y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                if i >= last:
                    losses.append(loss.detach())
            done = stop
            marks.append((stop, clock()))
        return t0, marks, torch.stack(losses).mean().item()
    return run


def lightning(model, batches, device_type="cpu"):
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
        def __init__(self, n, log_every):
            self.marks, self.losses, self.last = [], [], last_window(n, log_every)
            self.points = set(mark_points(n, log_every))

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            if batch_idx + 1 in self.points:
                self.marks.append((batch_idx + 1, clock()))
            if batch_idx >= self.last:
                self.losses.append(outputs["loss"])

    module = Module()
    accelerator = "gpu" if device_type == "cuda" else "cpu"

    def run(n, log_every):
        cb, t0 = Marks(n, log_every), clock()
        trainer = L.Trainer(max_steps=n, logger=False, enable_checkpointing=False,
                            enable_progress_bar=False, enable_model_summary=False,
                            accelerator=accelerator, devices=1, callbacks=[cb])
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
    def __init__(self, n, log_every):
        self.points = set(mark_points(n, log_every))

    def on_run_start(self, loop):
        self.start, self.marks, self.loss = loop.step, [], None

    def on_log(self, loop, metrics):
        # fit has just read its metric window to the host; the clock (and, on CUDA, a sync,
        # nearly free right after that read) only at the ends of the timed region.
        done = loop.step - self.start
        if done in self.points and not (self.marks and self.marks[-1][0] == done):
            self.marks.append((done, clock()))
        if "train/loss" in metrics:
            self.loss = metrics["train/loss"]


def functrain_fit(model, batches, backend, device, precision="32"):
    """(d), (e) and (g): `ft.fit`, one call per round (the compiled runner is reused)."""
    step, state = make_step(model, precision), new_state(model)

    def run(n, log_every):
        nonlocal state
        cb, t0 = FitMarks(n, log_every), clock()
        state = ft.fit(step, state, cycle(batches, n), max_steps=n, compile=backend,
                       device=device, callbacks=[ft.Logging.quiet(log_every), cb],
                       precision=precision)
        return t0, cb.marks, cb.loss
    run.step = step  # to look up the backend fit picked (fit_backend)
    return run


def fit_backend(run):
    """The backend of the runner `fit` built for this variant's step (after its first call)."""
    try:
        from functrain._fit import _RUNNERS

        return next(r.backend for r in _RUNNERS.get(run.step, {}).values())
    except Exception:  # private API: best effort
        return None


def compile_bare(step, state, cudagraphs):
    """`step` as one torch.compile graph that updates `state` in place and returns the loss
    (no `fit`); with `cudagraphs`, mode="reduce-overhead" (CUDA graphs over the state's fixed
    addresses, as fit's "cudagraphs" backend does). Also used by steps_per_call.py."""

    def bare_step(state, batch):
        new, metrics = step(state, batch)
        write_back(state, new)  # copy the new tensors into the old ones, inside the graph
        return metrics["loss"]

    remember_nodes(state)  # write_back needs TrainState's field names, read outside the graph
    if cudagraphs:
        for x in ft.tree.leaves(state):  # written in place by the graph: static addresses
            torch._dynamo.mark_static_address(x)
    return torch.compile(bare_step, fullgraph=True, dynamic=False,
                         mode="reduce-overhead" if cudagraphs else None)


def functrain_bare(model, batches, device):
    """(f): the whole step in one torch.compile graph, updating the state in place. On CUDA
    with CUDA graphs (`compile_bare`)."""
    step = make_step(model)
    state = ft.tree.map(lambda x: x.to(device), new_state(model))  # all of it, as fit does
    cudagraphs = torch.device(device).type == "cuda"
    compiled = compile_bare(step, state, cudagraphs)

    def run(n, log_every):
        marks, losses, last, done = [], [], last_window(n, log_every), 0
        todo = cycle(batches, n)
        t0 = clock()
        for stop in mark_points(n, log_every):
            for i in range(done, stop):
                loss = compiled(state, todo[i])
                if i >= last:
                    # a CUDA graph's output is overwritten by its next replay: keep a copy
                    losses.append(loss.clone() if cudagraphs else loss)
            done = stop
            marks.append((stop, clock()))
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


def cudagraph_skips():
    """How many times inductor has fallen back from CUDA graphs so far (its reason goes to
    stderr as a perf hint)."""
    try:
        from torch._dynamo.utils import counters

        return counters["inductor"]["cudagraph_skips"]
    except Exception:  # private API: best effort
        return 0


def fail(failed, v, phase, e):
    """Report a variant's failure (one line here, the traceback on stderr) and record it."""
    msg = f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
    print(f"  {v}: FAILED in {phase}, dropped: {msg[:300]}", flush=True)
    traceback.print_exc(file=sys.stderr)
    sys.stderr.flush()
    failed[v] = f"{phase}: {msg}"


def bench(name, args, steps, window):
    desc, factory, shape, batch_size, _ = WORKLOADS[name]
    dev = args.dev
    # Every workload starts as in a fresh process: no compiled code (nor automatic dynamic
    # shapes, nor CUDA graphs) carried over from the previous one.
    gc.collect()
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = factory().to(dev)
    # Data placement, the same for every variant: the batches are made once (on the CPU, from
    # the same seed whatever the device) and live on the device. fit hands batches already on
    # its device straight to the step, so no variant pays for a host-to-device copy; a loader
    # of CPU tensors would add fit's pinned, prefetched copy on one side and a .to(device) in
    # the baselines' loops on the other: data loading, not the per-step cost measured here.
    batches = [(torch.randn(batch_size, *shape).to(dev),
                torch.randint(0, 10, (batch_size,)).to(dev)) for _ in range(N_BATCHES)]
    if dev.type == "cuda":
        # CUDA context, cuBLAS and cuDNN start-up: not in any variant's first step
        warm = copy.deepcopy(model)
        F.cross_entropy(warm(batches[0][0]), batches[0][1]).backward()
        del warm
        torch.cuda.synchronize()
    m = lambda: copy.deepcopy(model)  # same initial weights for everyone
    cuda = dev.type == "cuda"
    # what fit's compile="auto" runs once compiled (its documented rule), asked for by name
    auto = "cudagraphs" if cuda else "inductor"
    A = "(a) eager + AdamW foreach"
    E = f"(e) functrain fit, {auto}"
    Fb = "(f) bare compiled step, no fit" + (", reduce-overhead" if cuda else "")
    variants, failed = {}, {}

    def add(label, make):
        try:
            variants[label] = make()
        except Exception as e:  # noqa: BLE001 - reported, the others go on
            if label == A:
                raise
            fail(failed, label, "setup", e)

    def plain_variant(compile_mode=None, **kw):
        def make():
            mod = m()
            opt = torch.optim.AdamW(mod.parameters(), LR, weight_decay=WD,
                                    **({"fused": True} if compile_mode else {"foreach": True}))
            if compile_mode == "default":
                mod = torch.compile(mod)
            elif compile_mode:
                mod = torch.compile(mod, mode=compile_mode)
            return plain(mod, opt, batches, device_type=dev.type, **kw)
        return make

    add(A, plain_variant())
    add("(b) compile(model) + AdamW fused", plain_variant("default"))
    if cuda:  # the fair competitor to fit's "cudagraphs" backend
        add("(b2) compile(model, reduce-overhead) + AdamW fused",
            plain_variant("reduce-overhead"))
    try:
        variants["(c) Lightning Trainer, no logging"] = lightning(m(), batches, dev.type)
    except ImportError as e:
        print(f"(c) skipped: lightning is not importable ({e}); pip install lightning")
    except Exception as e:  # noqa: BLE001
        fail(failed, "(c) Lightning Trainer, no logging", "setup", e)
    add("(d) functrain fit, eager", lambda: functrain_fit(m(), batches, "eager", args.device))
    add(E, lambda: functrain_fit(m(), batches, auto, args.device))
    add(Fb, lambda: functrain_bare(m(), batches, args.device))
    if "bf16-mixed" in args.precision:
        add("(a:bf16) eager + autocast bf16 + AdamW foreach",
            plain_variant(autocast=torch.bfloat16))
    for mode in args.precision:
        add(f"(g:{mode}) functrain fit, {auto}",
            lambda mode=mode: functrain_fit(m(), batches, auto, args.device, mode))

    where = (f"{torch.get_num_threads()} threads" if not cuda
             else f"{torch.cuda.get_device_name(dev)}")
    print(f"\n== {name}: {desc}, batch {batch_size}, {dev.type}; {args.rounds} rounds x "
          f"{steps} steps (+{window} untimed), {where}", flush=True)
    first, loss, cg_skips = {}, {}, {v: 0 for v in variants}

    def call(v, n, log_every):
        before = cudagraph_skips()
        try:
            return variants[v](n, log_every)
        finally:
            cg_skips[v] += cudagraph_skips() - before

    # Warm-up, `window` steps each: compiles, and keeps fit's metric windows (aligned to the
    # global step) in line with the rounds' windows, so the "loss" column compares like with like.
    for v in list(variants):
        try:
            t0, marks, _ = call(v, window, 1)
        except Exception as e:  # noqa: BLE001
            if v == A:
                raise
            fail(failed, v, "warm-up", e)
            del variants[v]
            continue
        first[v] = marks[0][1] - t0
        print(f"  warm-up {v}: first step {first[v]:.2f} s", flush=True)
        if v.startswith(("(e)", "(g:")):  # label it with the backend fit really used
            used = fit_backend(variants[v])
            if used is not None and used != auto:
                new = v.replace(f", {auto}", f", {used}")
                print(f"  note: fit's compile='auto' picked {used!r}, not {auto!r}: {new}")
                variants = {new if k == v else k: r for k, r in variants.items()}
                first[new], cg_skips[new] = first.pop(v), cg_skips.pop(v)
                E = new if v == E else E
    rounds = {v: [] for v in variants}
    start = {v: [] for v in variants}
    names = list(variants)
    for r in range(args.rounds):
        for v in names[r % len(names):] + names[:r % len(names)]:
            if v in failed:
                continue
            try:
                t0, marks, loss[v] = call(v, window + steps, window)
            except Exception as e:  # noqa: BLE001
                if v == A:
                    raise
                fail(failed, v, f"round {r + 1}", e)
                continue
            per_step, startup = steady(t0, marks, window)
            rounds[v].append(per_step * 1e6)
            start[v].append(startup)
    names = [v for v in names if v not in failed]

    med = {v: statistics.median(rounds[v]) for v in names}
    base = med[A]
    w = max(46, max(len(v) for v in names) + 2)
    print(f"  {'variant':{w}s}{'µs/step':>10s}{'vs (a)':>8s}{'1st step s':>12s}"
          f"{'start s':>9s}{'loss':>9s}")
    for v in names:
        print(f"  {v:{w}s}{med[v]:10.0f}{med[v] / base:8.2f}{first[v]:12.2f}"
              f"{statistics.median(start[v]):9.2f}{loss[v]:9.4f}")
    for v, k in cg_skips.items():
        if k:
            print(f"  note: inductor skipped CUDA graphs {k}x in {v} (reason on stderr, a "
                  "perf hint): it ran without them")
    for v, why in failed.items():
        print(f"  FAILED {v}: {why[:300]}")
    e, f = med.get(E), med.get(Fb)
    targets = []
    if e is not None and not cuda:
        targets.append((f"(e) <= {TARGETS[name]:.2f}x (a)", e / base, TARGETS[name]))
    elif e is not None:
        print(f"  (e)/(a): {e / base:.2f} (its targets are for a 2-core CPU; none on cuda)")
    if e is not None and f is not None:
        targets.append((f"(e)/(f) <= {FIT_OVERHEAD_TARGET:.2f} (fit's own overhead)", e / f,
                        FIT_OVERHEAD_TARGET))
    for label, value, limit in targets:
        print(f"  target {label}: {value:.2f} {'met' if value <= limit else 'NOT met'}")
    return {"description": desc, "batch_size": batch_size, "steps": steps,
            "median_us": med, "ratio_to_a": {v: med[v] / base for v in med},
            "rounds_us": {v: rounds[v] for v in names}, "first_step_s": first,
            "start_s": {v: statistics.median(start[v]) for v in names},
            "final_loss": {v: loss[v] for v in names},
            "fit_overhead": e / f if e is not None and f is not None else None,
            "targets": [{"target": t, "value": x, "met": x <= lim} for t, x, lim in targets],
            "cudagraph_skips": {v: k for v, k in cg_skips.items() if k}, "failed": failed}


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--workloads", default="mlp,cnn,tiny", help="comma-separated: mlp,cnn,tiny")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"),
                   help="where models, optimizer states and batches live (default cpu); "
                   "cuda adds (b2) and runs (e), (f) with CUDA graphs")
    p.add_argument("--rounds", type=int, default=None,
                   help="timed rounds (default 5; 2 with --quick)")
    p.add_argument("--steps", type=int, default=None,
                   help="timed steps per round, rounded up to whole metric windows (50; 10 "
                   "with --quick) (default: mlp 200, cnn 50, tiny 1000; a tenth with --quick)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch.set_num_threads, CPU only (default 2; with --device cuda "
                   "torch's default is left alone)")
    p.add_argument("--quick", action="store_true", help="a short smoke run")
    p.add_argument("--json", metavar="PATH", help="also write the results as JSON (rewritten "
                   "after each workload, so an interrupted run keeps what it finished)")
    p.add_argument("--precision", default="", help="comma list of fit precision modes to add "
                   "as variants (g), e.g. bf16-mixed,16-mixed,bf16-true; with bf16-mixed also "
                   "(a:bf16), plain eager under autocast")
    args = p.parse_args()
    names = args.workloads.split(",")
    args.precision = [p for p in args.precision.split(",") if p]
    for name in names:
        if name not in WORKLOADS:
            p.error(f"--workloads: expected names from {','.join(WORKLOADS)}, got {name!r}")
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error(f"--device cuda: no usable CUDA device (torch {torch.__version__}, built for "
                f"CUDA {torch.version.cuda}; torch.cuda.is_available() is False). HINT: run "
                "it on a GPU machine, or use --device cpu.")
    args.rounds = args.rounds or (2 if args.quick else 5)
    # fit reads its metrics every `window` steps (its default log_every, 50), and each round
    # leaves the first window untimed; --quick shortens it.
    window = 10 if args.quick else 50
    global _sync
    if args.device == "cuda":
        args.dev = torch.device("cuda", torch.cuda.current_device())
        _sync = torch.cuda.synchronize
        if args.threads is not None:
            print("--threads: ignored with --device cuda")
        with contextlib.suppress(Exception):  # why inductor skips CUDA graphs, on stderr
            torch._logging.set_logs(perf_hints=True)
    else:
        args.dev = torch.device("cpu")
        torch.set_num_threads(args.threads or 2)
    device_name = "cpu" if args.dev.type == "cpu" else torch.cuda.get_device_name(args.dev)
    on = f"{torch.get_num_threads()} threads" if args.dev.type == "cpu" else device_name

    t_start, results = time.perf_counter(), {}
    for name in names:
        steps = args.steps or WORKLOADS[name][4] // (10 if args.quick else 1)
        steps = -(-steps // window) * window  # whole windows, so fit's windows line up
        results[name] = bench(name, args, steps, window)
        wall = time.perf_counter() - t_start
        if args.json:
            with open(args.json, "w") as fh:
                json.dump({"torch": torch.__version__, "device": args.dev.type,
                           "device_name": device_name, "threads": torch.get_num_threads(),
                           "rounds": args.rounds, "window": window, "quick": args.quick,
                           "wall_s": wall, "workloads": results}, fh, indent=1)
    print(f"\ntotal {wall / 60:.1f} min; torch {torch.__version__}, {args.dev.type}, {on}")


if __name__ == "__main__":
    main()
