"""Time to result: the main job (examples/mnist1d.py) end to end, as whole processes.

Each variant is a fresh Python process timed from spawn to exit (imports, data generation,
compilation, training, evaluation, all of it), which is what a researcher waits for:

- ``plain``: a hand-written PyTorch loop doing the same job (the same CNN, Adam 1e-2, batch
  100, the same steps, evaluation every 1000 steps and at the end), eager; run by this script
  itself (``--child plain``).
- ``plain-compiled``: the same loop with ``torch.compile(model)`` (timed when asked for with
  ``--variants``; not in the default set).
- ``lightning``: a ``lightning.Trainer`` run of the same job, only when ``lightning`` is
  importable (otherwise skipped with a note).
- ``fit-eager``: ``python examples/mnist1d.py --compile eager``.
- ``fit-auto-cold``: ``python examples/mnist1d.py --compile auto`` with a fresh, empty
  ``TORCHINDUCTOR_CACHE_DIR`` (nothing cached from any earlier process).
- ``fit-auto-warm``: the same, right after the cold run, with that now-filled cache dir.

Variants run in rotation, one process each per round, so machine load hits all alike; the
script prints per-variant medians, ratios to ``plain``, and the test accuracy each process
reported (they must agree within noise: the job is the same). With ``--short N`` it also
runs every variant for N steps and prints the per-step time from the difference of the two
lengths, which removes the fixed costs (imports, compile) from the comparison.

    python benchmarks/time_to_result.py                         # 6000 steps, 3 rounds
    python benchmarks/time_to_result.py --steps 2000 --short 500 --rounds 3 --threads 1
    python benchmarks/time_to_result.py --json ttr.json

``--threads`` sets ``OMP_NUM_THREADS`` (and ``torch.set_num_threads``) in every child
(default 1: on a shared 2-core machine, 1-thread timings are far steadier than 2-thread ones).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLE = os.path.join(ROOT, "examples", "mnist1d.py")
DEFAULT_VARIANTS = ("plain", "lightning", "fit-eager", "fit-auto-cold", "fit-auto-warm")


# ---------------------------------------------------------------------------------------------
# The plain PyTorch loop (and Lightning), run as children of this script.


def _mnist1d():
    """examples/mnist1d.py as a module (its model and data), under a name that does not hide
    the ``mnist1d`` package it imports."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("_example_mnist1d", EXAMPLE)
    ex = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ex)
    return ex


def child_plain(steps: int, batch_size: int, lr: float, seed: int, compiled: bool) -> None:
    import torch
    from torch import nn

    ex = _mnist1d()
    torch.manual_seed(seed)
    (x, y), (x_test, y_test) = ex.load_mnist1d()
    model = ex.ConvNet()
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    fwd = torch.compile(model) if compiled else model

    @torch.no_grad()
    def evaluate():
        model.eval()
        correct = sum((fwd(x_test[i:i + 500]).argmax(1) == y_test[i:i + 500]).sum().item()
                      for i in range(0, len(x_test), 500))
        model.train()
        return correct / len(x_test)

    g = torch.Generator().manual_seed(seed)
    step, per_epoch = 0, len(x) // batch_size
    while step < steps:
        order = torch.randperm(len(x), generator=g)
        for i in range(per_epoch):
            idx = order[i * batch_size:(i + 1) * batch_size]
            loss = nn.functional.cross_entropy(fwd(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            if step % 100 == 0:
                loss.item()  # what a loop that logs every 100 steps reads
            if step % 1000 == 0 and step < steps:
                evaluate()
            if step == steps:
                break
    print(f"test accuracy: {evaluate():.2%} after {step} steps")


def child_lightning(steps: int, batch_size: int, lr: float, seed: int) -> None:
    import lightning as L
    import torch
    from torch import nn

    ex = _mnist1d()
    torch.manual_seed(seed)
    (x, y), (x_test, y_test) = ex.load_mnist1d()

    class Module(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = ex.ConvNet()

        def training_step(self, batch, i):
            loss = nn.functional.cross_entropy(self.net(batch[0]), batch[1])
            self.log("loss", loss)
            return loss

        def validation_step(self, batch, i):
            self.log("acc", (self.net(batch[0]).argmax(1) == batch[1]).float().mean())

        def configure_optimizers(self):
            return torch.optim.Adam(self.parameters(), lr=lr)

    data = torch.utils.data.TensorDataset
    train = torch.utils.data.DataLoader(data(x, y), batch_size, shuffle=True, drop_last=True)
    test = torch.utils.data.DataLoader(data(x_test, y_test), 500)
    trainer = L.Trainer(max_steps=steps, val_check_interval=1000, check_val_every_n_epoch=None,
                        accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)
    module = Module()
    trainer.fit(module, train, test)
    acc = trainer.validate(module, test, verbose=False)[0]["acc"]
    print(f"test accuracy: {acc:.2%} after {steps} steps")


# ---------------------------------------------------------------------------------------------
# The parent: spawn, time, rotate.


def command(variant: str, steps: int, run_dir: str) -> list[str]:
    me = os.path.abspath(__file__)
    if variant in ("plain", "plain-compiled", "lightning"):
        return [sys.executable, me, "--child", variant, "--steps", str(steps)]
    mode = "eager" if variant == "fit-eager" else "auto"
    return [sys.executable, EXAMPLE, "--steps", str(steps), "--compile", mode,
            "--run-dir", run_dir]


def run_once(variant: str, steps: int, threads: int, cache_dir: str, tmp: str) -> dict:
    env = {**os.environ, "PYTHONPATH": ROOT, "OMP_NUM_THREADS": str(threads),
           "TORCHINDUCTOR_CACHE_DIR": cache_dir}
    run_dir = tempfile.mkdtemp(dir=tmp)
    t0 = time.perf_counter()
    out = subprocess.run(command(variant, steps, run_dir), env=env, capture_output=True,
                         text=True, timeout=3600)
    wall = time.perf_counter() - t0
    if out.returncode != 0:
        print(f"  {variant} failed:\n{out.stderr[-3000:]}", file=sys.stderr)
        return {"wall_s": float("nan"), "accuracy": float("nan")}
    acc = float(out.stdout.split("test accuracy:")[1].split("%")[0])
    return {"wall_s": wall, "accuracy": acc}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=6000)
    parser.add_argument("--short", type=int, default=0,
                        help="also run this many steps; per-step time from the difference")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--variants", default=",".join(DEFAULT_VARIANTS))
    parser.add_argument("--json", default=None)
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--batch-size", type=int, default=100, help=argparse.SUPPRESS)
    parser.add_argument("--lr", type=float, default=1e-2, help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        import torch

        torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
        if args.child == "lightning":
            child_lightning(args.steps, args.batch_size, args.lr, args.seed)
        else:
            child_plain(args.steps, args.batch_size, args.lr, args.seed,
                        compiled=args.child == "plain-compiled")
        return

    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    if "lightning" in variants:
        try:
            import lightning  # noqa: F401
        except ImportError:
            print("note: lightning is not importable here: the lightning variant is skipped "
                  "(pip install lightning to include it)")
            variants.remove("lightning")
    lengths = [args.steps] + ([args.short] if args.short else [])
    print(f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at start, "
          f"{args.threads} thread(s) per process, {args.rounds} rounds, steps {lengths}; "
          "batches: a fresh shuffled epoch order (ArrayLoader / randperm), no cycling")
    results: dict[tuple[str, int], list[dict]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for steps in lengths:
                cache = tempfile.mkdtemp(dir=tmp)  # fresh: the cold run fills it, warm reuses
                order = variants[r % len(variants):] + variants[:r % len(variants)]
                if "fit-auto-warm" in order and "fit-auto-cold" in order:
                    order.remove("fit-auto-warm")  # warm must follow its cold run
                    order.insert(order.index("fit-auto-cold") + 1, "fit-auto-warm")
                for v in order:
                    shared = cache if v.startswith("fit-auto") else tempfile.mkdtemp(dir=tmp)
                    res = run_once(v, steps, args.threads, shared, tmp)
                    results.setdefault((v, steps), []).append(res)
                    print(f"  round {r + 1} {v:<15} {steps:>6} steps {res['wall_s']:8.1f} s  "
                          f"acc {res['accuracy']:.2f}%  (load {os.getloadavg()[0]:.1f})",
                          flush=True)

    med = {k: statistics.median(x["wall_s"] for x in v) for k, v in results.items()}
    base = med.get(("plain", args.steps))
    print(f"\nwall time of the whole process, {args.steps} steps (median of {args.rounds})")
    print(f"{'variant':<16}{'wall s':>9}{'vs plain':>10}{'accuracy %':>12}")
    for v in variants:
        w = med[(v, args.steps)]
        acc = statistics.median(x["accuracy"] for x in results[(v, args.steps)])
        ratio = f"{w / base:.2f}" if base else "-"
        print(f"{v:<16}{w:>9.1f}{ratio:>10}{acc:>12.2f}")
    per_step = {}
    if args.short:
        print(f"\nper step, from ({args.steps} - {args.short})-step difference of medians")
        print(f"{'variant':<16}{'ms/step':>9}{'vs plain':>10}{'fixed s':>9}")
        for v in variants:
            ms = (med[(v, args.steps)] - med[(v, args.short)]) / (args.steps - args.short) * 1e3
            per_step[v] = ms
        for v in variants:
            fixed = med[(v, args.short)] - per_step[v] * args.short / 1e3
            ratio = f"{per_step[v] / per_step['plain']:.2f}" if "plain" in per_step else "-"
            print(f"{v:<16}{per_step[v]:>9.2f}{ratio:>10}{fixed:>9.1f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"steps": lengths, "threads": args.threads, "rounds": args.rounds,
                       "runs": {f"{v}@{s}": x for (v, s), x in results.items()},
                       "median_wall_s": {f"{v}@{s}": m for (v, s), m in med.items()},
                       "per_step_ms": per_step}, f, indent=1)


if __name__ == "__main__":
    main()
