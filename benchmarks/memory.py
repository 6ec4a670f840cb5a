"""Peak memory of `fit` against a plain PyTorch loop (CPU), each in its own process.

Method: every variant runs in a fresh Python process (``--child``) that imports torch *and*
functrain (so both pay the same library memory), builds the model, data and optimizer, runs
``--warmup`` steps (compiling, for the compiled variants), then returns freed heap memory to
the system (glibc ``malloc_trim(0)``) and resets the kernel's peak-RSS counter (``echo 5 >
/proc/self/clear_refs``, Linux >= 4.0), and runs ``--steps`` more. It reports

* ``steady``: the peak resident set (VmHWM) over those last steps: live state, gradients,
  activations and whatever the step allocates and frees, on top of the libraries and, for
  compiled variants, the compiled code;
* ``process``: the whole process's peak (``resource.getrusage(RUSAGE_SELF).ru_maxrss``), which
  includes compiling;
* ``before``: the resident set after set-up, before the first step.

Variants: ``plain`` (``loss.backward(); opt.step()``, torch.optim.Adam/AdamW, foreach),
``plain-compiled`` (the same with ``torch.compile(model)``), ``fit-eager``, ``fit-inductor``,
``fit-auto`` (``ft.fit`` with that ``compile=``; every child runs with
``FUNCTRAIN_BACKGROUND_COMPILE=0``, so ``fit-auto``'s warm-up compiles in the process, as
``fit-inductor``'s does, instead of forking a background compile); ``fit-eager-unkeyed`` and
``fit-inductor-unkeyed`` run the GPT's dropout unkeyed (torch's global generator, as the plain
loop does) to separate keyed dropout's memory from fit's. Workloads: ``mlp`` (a
1024-2048-2048-10 MLP, batch 256, Adam: ~6.3 M parameters, so that state memory shows above
RSS noise) and ``gpt`` (examples/gpt.py's char-GPT, 6 layers, d=384, block 128, batch 16,
AdamW: ~10.7 M parameters; keyed dropout in fit, ``nn.Dropout`` in the plain loop). Medians
over ``--rounds``, variants rotated per round.

    python benchmarks/memory.py                      # both workloads, 3 rounds
    python benchmarks/memory.py --workloads mlp --rounds 1 --steps 50
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import statistics
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VARIANTS = ("plain", "plain-compiled", "fit-eager", "fit-inductor", "fit-auto")


def _status(field: str) -> float:
    """A /proc/self/status field in MiB (VmRSS, VmHWM)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise KeyError(field)


def _reset_peak() -> None:
    import ctypes

    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)  # hand freed heap (compile-time memory) back first
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def _workload(name: str):
    """``(model, batches, make_tx, make_opt, loss)`` for a workload."""
    import torch
    from torch import nn

    import functrain as ft

    g = torch.Generator().manual_seed(0)
    if name == "mlp":
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(1024, 2048), nn.ReLU(), nn.Linear(2048, 2048), nn.ReLU(),
                              nn.Linear(2048, 10))
        batches = [(torch.randn(256, 1024, generator=g), torch.randint(0, 10, (256,), generator=g))
                   for _ in range(8)]
        return (model, batches, lambda: ft.optim.adam(1e-3),
                lambda params: torch.optim.Adam(params, 1e-3, foreach=True),
                lambda out, y: nn.functional.cross_entropy(out, y))
    sys.path.insert(0, os.path.join(ROOT, "examples"))
    import gpt as ex

    torch.manual_seed(0)
    vocab, block = 65, 128
    model = ex.GPT(vocab, block, layers=6, heads=6, d=384, dropout=0.1)
    batches = []
    for _ in range(8):
        ids = torch.randint(0, vocab, (16, block + 1), generator=g)
        batches.append((ids[:, :-1].contiguous(), ids[:, 1:].contiguous()))
    return (model, batches, lambda: ft.optim.adamw(1e-3, weight_decay=0.1),
            lambda params: torch.optim.AdamW(params, 1e-3, weight_decay=0.1, foreach=True),
            lambda out, y: nn.functional.cross_entropy(out.flatten(0, 1), y.flatten()))


def child(workload: str, variant: str, warmup: int, steps: int) -> dict:
    import torch

    import functrain as ft

    model, batches, make_tx, make_opt, loss_of = _workload(workload)
    if variant.startswith("plain"):
        fwd = torch.compile(model) if variant == "plain-compiled" else model
        opt = make_opt(model.parameters())
        before = _status("VmRSS")

        def one(i):
            x, y = batches[i % len(batches)]
            loss = loss_of(fwd(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        for i in range(warmup):
            one(i)
        _reset_peak()
        for i in range(steps):
            one(i)
        steady = _status("VmHWM")
    else:
        state = ft.TrainState.create(model, make_tx(), seed=0)
        keyed = workload == "gpt" and not variant.endswith("-unkeyed")  # unkeyed: nn.Dropout

        def step(state, batch):
            x, y = batch
            key = ft.random.fold_in(state.rng, state.step) if keyed else None

            def loss_fn(params):
                out, _ = ft.call(model, params, state.buffers, x, rng=key, train=True)
                return loss_of(out, y)

            loss, grads = torch.func.grad_and_value(loss_fn)(state.params)[::-1]
            return state.apply_gradients(grads), {"loss": loss}

        class Peak(ft.callbacks.Callback):
            steady = 0.0

            def on_log(self, loop, metrics):
                if loop.step == warmup:
                    _reset_peak()

            def on_run_end(self, loop):
                Peak.steady = _status("VmHWM")

        before = _status("VmRSS")
        ft.fit(step, state, batches, max_steps=warmup + steps,
               compile=variant.split("-")[1],
               callbacks=[Peak(), ft.Logging(every=warmup, progress=False, summary=False,
                                             sanity_eval=0)])
        steady = Peak.steady
    process = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"before": before, "steady": steady, "process": process}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workloads", default="mlp,gpt")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", default=None)
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        import torch

        torch.set_num_threads(args.threads)
        workload, variant = args.child.split(":")
        print(json.dumps(child(workload, variant, args.warmup, args.steps)))
        return

    workloads = args.workloads.split(",")
    variants = args.variants.split(",")
    print(f"{os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}, {args.threads} thread(s), "
          f"{args.rounds} round(s), {args.warmup} warm-up + {args.steps} measured steps, "
          "8 pre-made batches cycled")
    res: dict[tuple[str, str], list[dict]] = {}
    env = {**os.environ, "PYTHONPATH": ROOT, "OMP_NUM_THREADS": str(args.threads),
           "FUNCTRAIN_BACKGROUND_COMPILE": "0"}
    for r in range(args.rounds):
        for w in workloads:
            for v in variants[r % len(variants):] + variants[:r % len(variants)]:
                out = subprocess.run(
                    [sys.executable, os.path.abspath(__file__), "--child", f"{w}:{v}",
                     "--warmup", str(args.warmup), "--steps", str(args.steps),
                     "--threads", str(args.threads)],
                    env=env, capture_output=True, text=True, timeout=1800)
                if out.returncode != 0:
                    print(f"  {w} {v} failed:\n{out.stderr[-2000:]}", file=sys.stderr)
                    continue
                m = json.loads(out.stdout.strip().splitlines()[-1])
                res.setdefault((w, v), []).append(m)
                print(f"  round {r + 1} {w:<4} {v:<15} before {m['before']:7.1f}  steady "
                      f"{m['steady']:7.1f}  process {m['process']:7.1f} MiB", flush=True)
    print("\nMiB, medians: steady = peak RSS over the measured steps; process = whole-process "
          "peak (compiling included)")
    print(f"{'workload':<9}{'variant':<16}{'before':>8}{'steady':>8}{'process':>9}"
          f"{'steady - plain':>16}")
    table = {}
    for w in workloads:
        med = {v: {k: statistics.median(m[k] for m in res[(w, v)]) for k in res[(w, v)][0]}
               for v in variants if (w, v) in res}
        for v, m in med.items():
            base = med.get("plain-compiled" if v in ("fit-inductor",) else "plain")
            delta = f"{m['steady'] - base['steady']:+.1f}" if base else "-"
            print(f"{w:<9}{v:<16}{m['before']:>8.1f}{m['steady']:>8.1f}{m['process']:>9.1f}"
                  f"{delta:>16}")
        table[w] = med
    print("(steady - plain: fit-inductor against plain-compiled, the others against plain)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "table": table}, f, indent=1)


if __name__ == "__main__":
    main()
