"""Compile latency: the first (compiling) call of the MNIST-1D step, cold and warm, and its parts.

Each measurement is a fresh Python process (``--child``) that builds the README's main job's
training step (examples/mnist1d.py: the CNN, Adam 1e-2, batch 100; random batches of the
right shapes, since only shapes reach the compiler), runs ``ft.compile_step(step,
compile="inductor")`` on one batch, and reports:

- ``first_call_s``: the first call (tracing, compiling or loading, guards, the run itself);
- ``import_s``: ``import torch, functrain`` in that process;
- Dynamo's phases (``torch._dynamo.utils.compile_times``), and torch's cache counters
  (``fxgraph_cache_hit``, ``autograd_cache_hit``, ...) with functrain's step cache counters.

Per round, a fresh empty ``TORCHINDUCTOR_CACHE_DIR`` is filled by a cold process, then
``--warm`` warm processes reuse it (per checkout with ``--baseline``, alternating which goes
first). Medians over rounds; every process's params checksum after 3 steps is compared.

    python benchmarks/compile_latency.py --rounds 3 --warm 2        # cold + warm table
    python benchmarks/compile_latency.py --rounds 1 --profile warm  # + cProfile of a warm call
    python benchmarks/compile_latency.py --env FUNCTRAIN_STEP_CACHE=0   # functrain's cache off
    python benchmarks/compile_latency.py --baseline /path/to/main   # + another checkout

``--threads`` sets ``OMP_NUM_THREADS`` and ``torch.set_num_threads`` in every child (default 1).
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


def child(profile: str | None, out: str) -> None:
    t0 = time.perf_counter()
    import torch

    import functrain as ft

    import_s = time.perf_counter() - t0
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    import importlib.util

    spec = importlib.util.spec_from_file_location("_example_mnist1d", EXAMPLE)
    ex = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = ex  # importable by name, as the script's own __main__ would be
    spec.loader.exec_module(ex)
    from torch import nn

    torch.manual_seed(0)
    model = ex.ConvNet()
    state = ft.TrainState.create(model, ft.optim.adam(1e-2), seed=0)

    def step(state, batch):
        x, y = batch

        def loss_fn(params):
            logits, _ = ft.call(model, params, state.buffers, x)
            return nn.functional.cross_entropy(logits, y), logits

        grads, (loss, logits) = torch.func.grad_and_value(loss_fn, has_aux=True)(state.params)
        return state.apply_gradients(grads), {
            "loss": loss, "accuracy": ft.metrics.Accuracy.from_logits(logits, y)}

    g = torch.Generator().manual_seed(0)
    batches = [(torch.randn(100, 40, generator=g), torch.randint(10, (100,), generator=g))
               for _ in range(3)]
    runner = ft.compile_step(step, compile="inductor")
    prof = None
    if profile:
        import cProfile

        prof = cProfile.Profile()
    t0 = time.perf_counter()
    if prof is not None:
        prof.enable()
    state, _ = runner(state, batches[0])
    if prof is not None:
        prof.disable()
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    for b in batches[1:]:
        state, _ = runner(state, b)
    second = (time.perf_counter() - t0) / 2
    from torch._dynamo.utils import compilation_time_metrics, counters

    phases = {k: sum(v) for k, v in compilation_time_metrics.items()}  # compile_times()'s data
    cnt = {f"{group}.{name}": n for group in ("inductor", "aot_autograd", "functrain")
           for name, n in counters[group].items()
           if "cache" in name or group == "functrain"}
    result = {"import_s": import_s, "first_call_s": first, "later_call_s": second,
              "compile_time_s": runner.compile_time, "phases": phases, "counters": cnt,
              "loss_sum": float(sum(x.double().sum() for x in ft.tree.leaves(state.params)))}
    if prof is not None:
        import io
        import pstats

        s = io.StringIO()
        pstats.Stats(prof, stream=s).sort_stats("cumulative").print_stats(45)
        result["profile"] = s.getvalue()
    with open(out, "w") as f:
        json.dump(result, f)


def run_child(cache: str, threads: int, profile: str | None, env_extra: dict,
              root: str = ROOT) -> dict:
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        out = f.name
    env = {**os.environ, "PYTHONPATH": root, "OMP_NUM_THREADS": str(threads),
           "TORCHINDUCTOR_CACHE_DIR": cache, **env_extra}
    cmd = [sys.executable, os.path.abspath(__file__), "--child", "--out", out]
    if profile:
        cmd += ["--profile", profile]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1800)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"child failed:\n{proc.stderr[-4000:]}")
    with open(out) as f:
        res = json.load(f)
    os.unlink(out)
    res["process_s"] = wall
    return res


PHASES = ("_compile.compile_inner", "bytecode_tracing", "compile_fx_inner",
          "CacheBase.get_system.triton_key", "build_guards", "async_compile.wait",
          "PyCodeCache.load_by_key_path")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--warm", type=int, default=2, help="warm processes per round")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--profile", choices=("warm", "cold"), default=None,
                        help="print a cProfile of that first call (last round)")
    parser.add_argument("--baseline", default=None, metavar="ROOT",
                        help="also time another checkout of functrain (e.g. main), interleaved")
    parser.add_argument("--env", action="append", default=[],
                        help="NAME=VALUE set in every child (repeatable)")
    parser.add_argument("--json", default=None)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--out", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.profile, args.out)
        return
    env_extra = dict(e.split("=", 1) for e in args.env)
    roots = {"this": ROOT, **({"baseline": args.baseline} if args.baseline else {})}
    print(f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at start, "
          f"{args.threads} thread(s), {args.rounds} rounds x (1 cold + {args.warm} warm) per "
          f"checkout {roots}, env {env_extra or '-'}", flush=True)
    runs: dict[str, list[dict]] = {f"{c}-{k}": [] for c in roots for k in ("cold", "warm")}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            caches = {c: tempfile.mkdtemp(dir=tmp) for c in roots}
            last = r == args.rounds - 1
            order = list(roots) if r % 2 == 0 else list(roots)[::-1]
            for kind in ["cold"] + ["warm"] * args.warm:
                for c in order:
                    prof = kind if last and args.profile == kind and c == "this" else None
                    res = run_child(caches[c], args.threads, prof, env_extra, roots[c])
                    runs[f"{c}-{kind}"].append(res)
                    print(f"  round {r + 1} {c}-{kind}: first call {res['first_call_s']:6.2f} s, "
                          f"import {res['import_s']:5.2f} s, process {res['process_s']:6.1f} s, "
                          f"load {os.getloadavg()[0]:.1f}; {res['counters']}", flush=True)
                    if prof:
                        print(res["profile"])
    sums = {x["loss_sum"] for v in runs.values() for x in v}
    print(f"params checksums over all processes: {sorted(sums)}"
          + ("" if len(sums) == 1 else "  (DIFFER)"))

    def med(name, get):
        xs = [get(x) for x in runs[name]]
        return statistics.median(xs) if xs else float("nan")

    names = list(runs)
    print("\nmedians (s)                    " + "".join(f"{n:>15}" for n in names))
    rows = [("first call", lambda x: x["first_call_s"]),
            ("import torch, functrain", lambda x: x["import_s"]),
            ("whole process", lambda x: x["process_s"])]
    rows += [(p, lambda x, p=p: x["phases"].get(p, 0.0)) for p in PHASES]
    for name, get in rows:
        print(f"{name:<31}" + "".join(f"{med(n, get):>15.2f}" for n in names))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"threads": args.threads, "env": env_extra, "roots": roots,
                       "runs": runs}, f, indent=1)


if __name__ == "__main__":
    main()
