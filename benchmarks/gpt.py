"""Tokens/s of `fit` against a nanoGPT-style plain loop, on the GPT of ``examples/gpt.py``.

Variants, all training the same model from the same weights on the same pre-made batches of
random token ids (content does not change the speed), one step = forward + backward + gradient
clipping at norm 1.0 + AdamW (lr 6e-4 with warm-up and cosine decay, weight decay 0.1 on the
matrices):

- ``plain``: ``nn.Module`` + ``torch.optim.AdamW(fused=True)``, ``clip_grad_norm_``, the learning
  rate set by hand each step (nanoGPT's ``train.py``), native dropout
- ``plain-compiled``: the same with ``torch.compile(model)`` (nanoGPT's default)
- ``fit-eager``: ``ft.fit(..., compile="eager")``, keyed dropout
- ``fit``: ``ft.fit(..., compile="inductor")`` on CPU, ``"auto"`` (CUDA graphs) on a GPU: the
  step ``"auto"`` runs once compiled (on a cold CPU start ``"auto"`` first trains eagerly while
  the step compiles in the background)

With ``--precision bf16-mixed`` (default on CUDA) the plain loops run under
``torch.autocast(dtype=torch.bfloat16)`` and `fit` with ``precision="bf16-mixed"``.

Each round runs each variant for ``--steps`` timed steps after the first-round warm-up
(compilation excluded and reported as ``1st s``); variants rotate between rounds; the table
gives median tokens/s, the ratio to ``plain-compiled`` (the goal: `fit` >= 1.2x on the CPU),
and on CUDA the MFU (nanoGPT's estimate: ``6 N + 12 L d T`` FLOPs per token against the GPU's
dense bf16 peak, ``--peak-tflops``, default 989 for an H100/H200 SXM) and peak memory.

    python benchmarks/gpt.py                         # CPU, small config (L4 d128 T64 b12)
    python benchmarks/gpt.py --threads 1 --rounds 5 --steps 10
    python benchmarks/gpt.py --gpu                   # GPT-2-small-like: L12 d768 T1024 b8, bf16
    python benchmarks/gpt.py --gpu --variants plain-compiled,fit --json gpt_cuda.json
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import statistics
import time

import torch
import torch.nn.functional as F

import functrain as ft

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VARIANTS = ("plain", "plain-compiled", "fit-eager", "fit")


def _example():
    spec = importlib.util.spec_from_file_location(
        "_example_gpt", os.path.join(ROOT, "examples", "gpt.py"))
    ex = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ex)
    return ex


def schedule_value(t: int, lr: float, warmup: int, total: int) -> float:
    """nanoGPT's get_lr, the same curve as ft.optim.warmup_cosine_decay_schedule(0, lr, ...)."""
    if t < warmup:
        return lr * t / warmup
    frac = min((t - warmup) / max(total - warmup, 1), 1.0)
    return lr / 10 + 0.5 * (1 + math.cos(math.pi * frac)) * (lr - lr / 10)


def make_variants(cfg, device, precision, total_steps, batches):
    ex = _example()
    torch.manual_seed(0)
    base = ex.GPT(cfg["vocab"], cfg["block"], cfg["layers"], cfg["heads"], cfg["d"],
                  cfg["dropout"]).to(device)
    lr, warmup = 6e-4, max(total_steps // 10, 1)
    autocast = precision == "bf16-mixed"
    out = {}

    def plain_variant(compiled):
        model = ex.GPT(cfg["vocab"], cfg["block"], cfg["layers"], cfg["heads"], cfg["d"],
                       cfg["dropout"]).to(device)
        model.load_state_dict(base.state_dict())
        decay = [p for p in model.parameters() if p.dim() >= 2]
        rest = [p for p in model.parameters() if p.dim() < 2]
        opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1},
                                 {"params": rest, "weight_decay": 0.0}],
                                lr=lr, betas=(0.9, 0.99), fused=True)
        fwd = torch.compile(model) if compiled else model
        t = [0]

        def run(n, i0):
            for i in range(n):
                x, y = batches[(i0 + i) % len(batches)]
                for g in opt.param_groups:
                    g["lr"] = schedule_value(t[0], lr, warmup, total_steps)
                with torch.autocast(device.type, torch.bfloat16, enabled=autocast):
                    logits = fwd(x)
                loss = F.cross_entropy(logits.flatten(0, 1).float(), y.flatten())
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                opt.step()
                opt.zero_grad(set_to_none=True)
                t[0] += 1
            return loss

        return run

    out["plain"] = plain_variant(False)
    out["plain-compiled"] = plain_variant(True)

    def fit_variant(compile):
        model = ex.GPT(cfg["vocab"], cfg["block"], cfg["layers"], cfg["heads"], cfg["d"],
                       cfg["dropout"]).to(device)
        model.load_state_dict(base.state_dict())
        sched = ft.optim.warmup_cosine_decay_schedule(0.0, lr, warmup, total_steps, lr / 10)
        tx = ft.optim.chain(
            ft.optim.clip_by_global_norm(1.0),
            ft.optim.adamw(sched, b1=0.9, b2=0.99, weight_decay=0.1,
                           mask=lambda p: {k: v.dim() >= 2 for k, v in p.items()}))
        holder = {"state": ft.TrainState.create(model, tx, seed=0)}

        def loss_fn(params, state, x, y, key):
            logits, _ = ft.call(model, params, state.buffers, x, rng=key, train=True)
            return F.cross_entropy(logits.flatten(0, 1).float(), y.flatten())

        def step(state, batch):
            key = ft.random.fold_in(state.rng, state.step)
            grads, loss = torch.func.grad_and_value(loss_fn)(state.params, state, *batch, key)
            return state.apply_gradients(grads), {"loss": loss}

        def run(n, i0):
            data = [batches[(i0 + i) % len(batches)] for i in range(n)]
            holder["state"] = ft.fit(step, holder["state"], data, epochs=1, compile=compile,
                                     device=device, precision=precision,
                                     callbacks=[ft.Logging.quiet()])
            return None

        return run

    out["fit-eager"] = fit_variant("eager")
    out["fit"] = fit_variant("auto" if device.type == "cuda" else "inductor")
    n_params = sum(p.numel() for p in base.parameters())  # tied head counted once
    return out, n_params


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gpu", action="store_true", help="GPT-2-small-like config on CUDA")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=None, help="timed steps per round")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--precision", default=None, help="32 or bf16-mixed")
    parser.add_argument("--dropout", type=float, default=None)
    parser.add_argument("--layers", type=int, default=None)
    parser.add_argument("--d", type=int, default=None)
    parser.add_argument("--block", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--peak-tflops", type=float, default=989.0)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()

    if args.gpu:
        device = torch.device("cuda")
        cfg = dict(vocab=50304, block=1024, layers=12, heads=12, d=768, dropout=0.0, batch=8)
        precision, steps = args.precision or "bf16-mixed", args.steps or 20
        torch.backends.cuda.matmul.allow_tf32 = True
    else:
        device = torch.device("cpu")
        torch.set_num_threads(args.threads)
        cfg = dict(vocab=84, block=64, layers=4, heads=4, d=128, dropout=0.1, batch=12)
        precision, steps = args.precision or "32", args.steps or 10
    for k, v in (("dropout", args.dropout), ("layers", args.layers), ("d", args.d),
                 ("block", args.block), ("batch", args.batch_size)):
        if v is not None:
            cfg[k] = v
    names = [v.strip() for v in args.variants.split(",") if v.strip()]
    g = torch.Generator().manual_seed(0)
    batches = []
    for _ in range(8):
        ids = torch.randint(cfg["vocab"], (cfg["batch"], cfg["block"] + 1), generator=g)
        batches.append((ids[:, :-1].to(device), ids[:, 1:].to(device)))
    total = (args.rounds + 1) * steps + 8
    variants, n_params = make_variants(cfg, device, precision, total, batches)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    tokens = cfg["batch"] * cfg["block"]
    print(f"torch {torch.__version__}, {device}, "
          f"{torch.get_num_threads() if device.type == 'cpu' else ''} threads, load "
          f"{os.getloadavg()[0]:.1f}; config {cfg}, {n_params / 1e6:.2f}M params, "
          f"{precision}, {args.rounds} rounds x {steps} steps, 8 cycled pre-made batches")
    first, times, peak = {}, {n: [] for n in names}, {}
    for n in names:  # warm-up: compile, first steps
        sync()
        t0 = time.perf_counter()
        variants[n](1, 0)
        sync()
        first[n] = time.perf_counter() - t0
        variants[n](3, 1)
    for r in range(args.rounds):
        for n in names[r % len(names):] + names[:r % len(names)]:
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats()
            sync()
            t0 = time.perf_counter()
            variants[n](steps, 4 + r * steps)
            sync()
            times[n].append(time.perf_counter() - t0)
            if device.type == "cuda":
                peak[n] = torch.cuda.max_memory_allocated() / 2**30
    ref = "plain-compiled" if "plain-compiled" in names else names[0]
    flops_per_token = 6 * n_params + 12 * cfg["layers"] * cfg["d"] * cfg["block"]
    rows = {}
    print(f"{'variant':<16}{'tokens/s':>11}{'ms/step':>9}{'vs ' + ref:>20}{'1st s':>8}"
          + (f"{'MFU %':>8}{'peak GiB':>10}" if device.type == "cuda" else ""))
    ref_tps = tokens * steps / statistics.median(times[ref])
    for n in names:
        med = statistics.median(times[n])
        tps = tokens * steps / med
        mfu = tps * flops_per_token / (args.peak_tflops * 1e12) * 100
        rows[n] = {"tokens_per_s": tps, "ms_per_step": med / steps * 1e3,
                   "first_s": first[n], "mfu_pct": mfu, "peak_gib": peak.get(n)}
        line = (f"{n:<16}{tps:>11,.0f}{med / steps * 1e3:>9.1f}{tps / ref_tps:>20.2f}"
                f"{first[n]:>8.1f}")
        if device.type == "cuda":
            line += f"{mfu:>8.1f}{peak[n]:>10.2f}"
        print(line)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"config": cfg, "precision": precision, "device": str(device),
                       "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
