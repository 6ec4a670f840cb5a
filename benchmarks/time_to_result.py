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
  ``TORCHINDUCTOR_CACHE_DIR``: no step, kernel or CPU probe cached from an earlier process.
  Inductor's precompiled C++ header stays where it is (``/tmp/torchinductor_$USER``, which
  that variable does not move), so it is warm after the first compile on a machine; the very
  first one also builds it (~5 s for the MNIST-1D step, see benchmarks/README.md).
- ``fit-auto-new``: the same with a fresh ``TORCHINDUCTOR_CACHE_DIR`` into which, before the
  timed process, an untimed one compiled an unrelated one-op function: a new step on a machine
  where Inductor has compiled before (its CPU probes cached, nothing of this step), what a
  researcher meets each time they change the model. Not in the default set.
- ``fit-auto-warm``: the same, right after the cold run, with that now-filled cache dir
  (after waiting for the cold run's background compile, if it outlived its process: see
  functrain/_background.py; the wait is printed, not counted).

Variants run in rotation, one process each per round, so machine load hits all alike; the
script prints per-variant medians, ratios to ``plain``, and the test accuracy each process
reported (they must agree within noise: the job is the same). With ``--short N`` it also
runs every variant for N steps and prints the per-step time from the difference of the two
lengths, which removes the fixed costs (imports, compile) from the comparison.

    python benchmarks/time_to_result.py                         # 6000 steps, 3 rounds
    python benchmarks/time_to_result.py --steps 2000 --short 500 --rounds 3 --threads 1
    python benchmarks/time_to_result.py --json ttr.json

``--goal`` instead times #16's goal for ``compile="auto"`` (never slower): per workload — an
MLP on MNIST-1D (``fit``, run by this script), the MNIST-1D CNN (examples/mnist1d.py), the
char-GPT (examples/gpt.py, few steps) and the PyTorch examples' MNIST CNN on Fashion-MNIST
(examples/mnist.py, Debian's files) — whole processes with ``--compile eager``,
``inductor`` and ``auto``, the compiled two cold (a fresh ``TORCHINDUCTOR_CACHE_DIR``) and warm
(right after, same dir), and prints ``auto / min(eager, inductor incl. compile)`` per cache
state:

    python benchmarks/time_to_result.py --goal --rounds 1
    python benchmarks/time_to_result.py --goal --goal-steps mlp=3000,cnn=6000,gpt=200

``--threads`` sets ``OMP_NUM_THREADS`` (and ``torch.set_num_threads``) in every child
(default 1: on a shared 2-core machine, 1-thread timings are far steadier than 2-thread ones).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator

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


def child_fit_mlp(steps: int, batch_size: int, lr: float, seed: int, compile: str) -> None:
    """The MLP workload of ``--goal``: MNIST-1D through a 40-256-256-10 MLP, Adam, `fit`."""
    import torch
    from torch import nn

    import functrain as ft

    ex = _mnist1d()
    torch.manual_seed(seed)
    train, test = ex.load_mnist1d()
    model = nn.Sequential(nn.Linear(40, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(),
                          nn.Linear(256, 10))
    state = ft.TrainState.create(model, ft.optim.adam(lr), seed=seed)

    def step(state, batch):
        x, y = batch

        def loss_fn(params):
            logits, _ = ft.call(model, params, state.buffers, x)
            return nn.functional.cross_entropy(logits, y)

        loss, grads = torch.func.grad_and_value(loss_fn)(state.params)[::-1]
        return state.apply_gradients(grads), {"loss": loss}

    def eval_fn(state, batch):
        x, y = batch
        logits, _ = ft.call(model, state.params, state.buffers, x)
        return {"accuracy": ft.metrics.Accuracy.from_logits(logits, y)}

    loader = ft.data.ArrayLoader(train, batch_size, shuffle=True, seed=seed, drop_last=True)
    state = ft.fit(step, state, loader, max_steps=steps, compile=compile,
                   callbacks=[ft.Logging(every=100, progress=False)])
    acc = ft.evaluate(eval_fn, state, ft.data.ArrayLoader(test, 500), compile=compile)
    print(f"test accuracy: {acc['accuracy']:.2%} after {int(state.step)} steps")


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
    return {"wall_s": wall, "accuracy": acc, "compiled": _compiled_line(out.stdout)}


GOAL_STEPS = {"mlp": 3000, "cnn": 6000, "gpt": 200, "mnist": 300}


def goal_command(workload: str, mode: str, steps: int, run_dir: str) -> list[str]:
    if workload == "mlp":
        return [sys.executable, os.path.abspath(__file__), "--child", "fit-mlp", "--steps",
                str(steps), "--compile", mode]
    if workload == "mnist":  # the PyTorch examples' MNIST CNN on Debian's Fashion-MNIST files
        return [sys.executable, os.path.join(ROOT, "examples", "mnist.py"), "--dataset",
                "fashion-mnist", "--max-steps", str(steps), "--compile", mode, "--run-dir",
                run_dir]
    script = EXAMPLE if workload == "cnn" else os.path.join(ROOT, "examples", "gpt.py")
    return [sys.executable, script, "--steps", str(steps), "--compile", mode, "--run-dir",
            run_dir]


@contextlib.contextmanager
def _held(path: str | None) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path`` (``--lock``) while one process is timed."""
    if path is None:
        yield
        return
    import fcntl

    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield


def _compiled_line(stdout: str) -> str | None:
    """The run summary's ``compiled`` line (how ``auto`` went), if the process printed one."""
    lines = [ln.split("compiled", 1)[1].strip() for ln in stdout.splitlines()
             if ln.strip().startswith("compiled ")]
    return lines[-1] if lines else None


def _seed_probes(cache_dir: str, threads: int) -> None:
    """Compile an unrelated one-op function with ``cache_dir`` as Inductor's cache (untimed),
    so it holds what any compile leaves behind on a machine (the CPU-ISA probes), nothing of
    the step."""
    code = "import torch; torch.compile(lambda x: x.sin() + 1)(torch.randn(8))"
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                   env={**os.environ, "OMP_NUM_THREADS": str(threads),
                        "TORCHINDUCTOR_CACHE_DIR": cache_dir})


def _wait_background(cache_dir: str, limit: float = 1800.0) -> float:
    """Wait until the background compile of the run that used ``cache_dir`` is over
    (functrain/_background.py), so the next run finds what it saved: the seconds waited after
    a 1 s settle. A child held for its run's end starts when its parent exits and first imports
    the compiler at nice 19, so the step cache's lock (which it takes next) can come seconds
    later; on Linux this waits instead for every process whose environment names
    ``cache_dir`` (the run's children inherit it), elsewhere for the step cache's locks."""
    import fcntl
    import glob

    settle = 1.0
    time.sleep(settle)
    t0 = time.perf_counter()
    if os.path.isdir("/proc/self"):
        marker = f"TORCHINDUCTOR_CACHE_DIR={cache_dir}".encode()
        while _processes_with(marker) and time.perf_counter() - t0 < limit:
            time.sleep(0.2)
        return time.perf_counter() - t0
    for path in glob.glob(os.path.join(cache_dir, "functrain_steps", "*.lock")):
        with open(path, "a") as f:
            while True:
                try:
                    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    fcntl.flock(f, fcntl.LOCK_UN)
                    break
                except BlockingIOError:
                    if time.perf_counter() - t0 > limit:
                        break
                    time.sleep(0.2)
    return time.perf_counter() - t0


def _processes_with(marker: bytes) -> list[int]:
    """The live processes (not zombies) whose environment holds the entry ``marker``."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                if marker not in f.read().split(b"\0"):
                    continue
            with open(f"/proc/{pid}/stat", "rb") as f:
                if f.read().rpartition(b")")[2].split()[0] == b"Z":
                    continue
        except OSError:  # gone, or not ours to read
            continue
        found.append(int(pid))
    return found


def goal(args: argparse.Namespace) -> None:
    """#16 item 1: wall time of ``auto`` against min(eager, inductor with its compile)."""
    steps = {}  # only the workloads named, or all three
    for item in filter(None, args.goal_steps.split(",")):
        name, n = item.split("=")
        steps[name] = int(n)
    steps = steps or dict(GOAL_STEPS)
    order = ["eager", "inductor-cold", "inductor-warm", "auto-cold", "auto-warm"]
    print(f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at start, "
          f"{args.threads} thread(s) per process, {args.rounds} round(s), steps {steps}")
    walls: dict[tuple[str, str], list[float]] = {}
    notes: dict[tuple[str, str], str] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for workload in steps:
                caches = {m: tempfile.mkdtemp(dir=tmp) for m in ("inductor", "auto", "eager")}
                rot = order[r % len(order):] + order[:r % len(order)]
                for m in ("inductor", "auto"):  # warm right after its cold run
                    rot.remove(f"{m}-warm")
                    rot.insert(rot.index(f"{m}-cold") + 1, f"{m}-warm")
                for variant in rot:
                    mode = variant.split("-")[0]
                    env = {**os.environ, "PYTHONPATH": ROOT, "OMP_NUM_THREADS": str(args.threads),
                           "TORCHINDUCTOR_CACHE_DIR": caches[mode]}
                    cmd = goal_command(workload, mode, steps[workload], tempfile.mkdtemp(dir=tmp))
                    with _held(args.lock):
                        t0 = time.perf_counter()
                        out = subprocess.run(cmd, env=env, capture_output=True, text=True,
                                             timeout=3600)
                        wall = time.perf_counter() - t0
                    if out.returncode != 0:
                        print(f"  {workload} {variant} failed:\n{out.stderr[-2000:]}",
                              file=sys.stderr)
                        wall = float("nan")
                    chose = _compiled_line(out.stdout) if mode == "auto" else None
                    after = _wait_background(caches[mode]) if mode == "auto" else 0.0
                    if chose:
                        notes[(workload, variant)] = chose + (
                            f" [its background compile ran {after:.1f} s after the process "
                            "exited]" if after > 0.5 else "")
                    walls.setdefault((workload, variant), []).append(wall)
                    said = f"  {notes.get((workload, variant), '')}" if chose else ""
                    print(f"  round {r + 1} {workload:<4} {variant:<14} {wall:7.1f} s  (load "
                          f"{os.getloadavg()[0]:.1f}){said}", flush=True)
    med = {k: statistics.median(v) for k, v in walls.items()}
    print(f"\nwall s of the whole process (median of {args.rounds}); ratio = auto / "
          "min(eager, inductor incl. compile), same cache state")
    print(f"{'workload':<9}{'steps':>6}{'eager':>8}{'ind cold':>9}{'ind warm':>9}{'auto cold':>10}"
          f"{'auto warm':>10}{'cold ratio':>11}{'warm ratio':>11}")
    table = {}
    for w in steps:
        m = {v: med[(w, v)] for v in order}
        cold = m["auto-cold"] / min(m["eager"], m["inductor-cold"])
        warm = m["auto-warm"] / min(m["eager"], m["inductor-warm"])
        table[w] = {**m, "cold_ratio": cold, "warm_ratio": warm}
        print(f"{w:<9}{steps[w]:>6}{m['eager']:>8.1f}{m['inductor-cold']:>9.1f}"
              f"{m['inductor-warm']:>9.1f}{m['auto-cold']:>10.1f}{m['auto-warm']:>10.1f}"
              f"{cold:>11.2f}{warm:>11.2f}")
    for (w, v), text in sorted(notes.items()):
        print(f"  {w} {v}: {text}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"steps": steps, "threads": args.threads, "rounds": args.rounds,
                       "walls": {f"{w}@{v}": x for (w, v), x in walls.items()},
                       "table": table, "decisions": {f"{w}@{v}": t for (w, v), t in notes.items()}},
                      f, indent=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=6000)
    parser.add_argument("--short", type=int, default=0,
                        help="also run this many steps; per-step time from the difference")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--variants", default=",".join(DEFAULT_VARIANTS))
    parser.add_argument("--json", default=None)
    parser.add_argument("--lock", default=None, metavar="FILE",
                        help="hold an flock on FILE while each process is timed (to share a "
                        "machine with other benchmarks that take the same lock)")
    parser.add_argument("--goal", action="store_true",
                        help="time compile='auto' against eager and inductor (see above)")
    parser.add_argument("--goal-steps", default="",
                        help="only these --goal workloads, with these steps, e.g. "
                        "mlp=3000,cnn=6000,gpt=200")
    parser.add_argument("--compile", default="auto", help=argparse.SUPPRESS)
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
        elif args.child == "fit-mlp":
            child_fit_mlp(args.steps, args.batch_size, args.lr, args.seed, args.compile)
        else:
            child_plain(args.steps, args.batch_size, args.lr, args.seed,
                        compiled=args.child == "plain-compiled")
        return
    if args.goal:
        goal(args)
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
                    shared = (cache if v in ("fit-auto-cold", "fit-auto-warm")
                              else tempfile.mkdtemp(dir=tmp))
                    if v == "fit-auto-new":
                        _seed_probes(shared, args.threads)
                    with _held(args.lock):
                        res = run_once(v, steps, args.threads, shared, tmp)
                    if v.startswith("fit-auto"):  # its background compile, if still running
                        res["background_after_exit_s"] = _wait_background(shared)
                    results.setdefault((v, steps), []).append(res)
                    bg = res.get("background_after_exit_s", 0.0)
                    print(f"  round {r + 1} {v:<15} {steps:>6} steps {res['wall_s']:8.1f} s  "
                          f"acc {res['accuracy']:.2f}%  (load {os.getloadavg()[0]:.1f})"
                          + (f"  background compile ran {bg:.1f} s after exit" if bg > 0.5
                             else "") + (f"  [{res['compiled']}]" if res.get("compiled")
                                         else ""), flush=True)

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
