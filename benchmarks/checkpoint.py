"""Checkpoint save / restore time and peak extra memory: functrain.checkpoint vs torch.save.

The state: a stack of square ``nn.Linear`` layers with ``--params`` parameters (default 100M)
and AdamW moments, so three float32 tensors per parameter (1.2 GB by default). Variants:

- ``ft_save``: `functrain.checkpoint.save` (DCP files, fsync, SHA-256 manifest, atomic rename)
- ``ft_save_async``: ``CheckpointManager.save(blocking=False)``; ``stall`` is how long the loop
  waits (the host copy), ``total`` until ``wait()`` returns
- ``torch_save``: ``torch.save({"model": ..., "optimizer": ...})`` of the equivalent
  ``nn.Module`` + ``torch.optim.AdamW`` state dicts (no fsync, as usually written)
- ``torch_save_fsync``: the same plus ``fsync``, which is what ``ft_save`` pays for durability
- ``ft_restore``: `functrain.checkpoint.restore` (checksums, then DCP) into a new state
- ``torch_restore``: ``torch.load(weights_only=True)`` + ``load_state_dict`` of both

Each measurement runs in a fresh subprocess that builds the state, resets the peak-RSS counter
(``/proc/self/clear_refs``) and reports the time of the operation and ``VmHWM`` minus the RSS
before it ("peak extra"). Variants are interleaved in rotated rounds; medians are reported.
Restores read the files just written, so from the page cache (a warm read, not a disk read).

Run from the repository root (needs ~6x the state size free under --dir, and ~3x in RAM)::

    ./dev python benchmarks/checkpoint.py                      # 100M params, 3 rounds
    ./dev python benchmarks/checkpoint.py --params 10e6 --rounds 1   # smoke run
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

VARIANTS = ("ft_save", "ft_save_async", "torch_save", "torch_save_fsync", "ft_restore",
            "torch_restore")


def layer_sizes(n_params: float) -> tuple[int, int]:
    """(layers, width) of square Linear layers (with bias) adding up to about n_params."""
    layers = max(1, round(n_params / 10e6))
    width = int(math.sqrt(n_params / layers))
    return layers, width


def build_ft_state(n_params: float):
    import torch

    import functrain as ft

    layers, width = layer_sizes(n_params)
    g = torch.Generator().manual_seed(0)
    params = {}
    for i in range(layers):
        params[f"{i}.weight"] = torch.randn(width, width, generator=g)
        params[f"{i}.bias"] = torch.randn(width, generator=g)
    tx = ft.optim.adamw(1e-3)
    opt_state = tx.init(params)
    for t in ft.tree.leaves(opt_state):
        if t.is_floating_point():
            t.normal_(generator=g).abs_()
    return ft.TrainState(step=torch.tensor(1000), params=params, buffers={},
                         opt_state=opt_state, rng=ft.random.key(0), tx=tx, module=None)


def build_torch_state(n_params: float):
    import torch

    layers, width = layer_sizes(n_params)
    with torch.device("meta"):
        model = torch.nn.Sequential(*[torch.nn.Linear(width, width) for _ in range(layers)])
    model = model.to_empty(device="cpu")
    g = torch.Generator().manual_seed(0)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(generator=g)
            opt.state[p] = {"step": torch.tensor(1000.0),
                            "exp_avg": torch.randn(p.shape, generator=g),
                            "exp_avg_sq": torch.randn(p.shape, generator=g).abs_()}
    return model, opt


def rss_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(field)


def reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM to the current RSS (Linux >= 4.0)


def measure(variant: str, n_params: float, workdir: Path) -> dict:
    """Run one variant in this (fresh) process; return seconds and peak extra MB."""
    import torch
    import torch.distributed.checkpoint  # noqa: F401 - a one-time import (~1-2 s), not timed

    from functrain import checkpoint as ckpt

    torch.set_num_threads(2)
    ft_path, pt_path = workdir / "ft_ckpt", workdir / "torch_ckpt.pt"
    out_dir = workdir / "out"
    shutil.rmtree(out_dir, ignore_errors=True)
    out_dir.mkdir()
    if variant.startswith("ft"):
        state = build_ft_state(n_params)
    else:
        model, opt = build_torch_state(n_params)
    result: dict = {}
    reset_peak()
    before = rss_kb("VmRSS")
    t0 = time.perf_counter()
    if variant == "ft_save":
        ckpt.save(out_dir / "c", state)
    elif variant == "ft_save_async":
        mgr = ckpt.CheckpointManager(out_dir, keep=1)
        mgr.save(1000, state, blocking=False)
        result["stall_s"] = time.perf_counter() - t0
        mgr.wait()
    elif variant in ("torch_save", "torch_save_fsync"):
        torch.save({"model": model.state_dict(), "optimizer": opt.state_dict()},
                   out_dir / "c.pt")
        if variant == "torch_save_fsync":
            with open(out_dir / "c.pt", "rb+") as f:
                os.fsync(f.fileno())
    elif variant == "ft_restore":
        back = ckpt.restore(ft_path, like=state)
        assert torch.equal(back.params["0.bias"], state.params["0.bias"])
    elif variant == "torch_restore":
        sd = torch.load(pt_path, weights_only=True, map_location="cpu")
        model.load_state_dict(sd["model"])
        opt.load_state_dict(sd["optimizer"])
    result["total_s"] = time.perf_counter() - t0
    result["peak_extra_mb"] = (rss_kb("VmHWM") - before) / 1024
    shutil.rmtree(out_dir, ignore_errors=True)
    return result


def prepare(n_params: float, workdir: Path) -> None:
    """Write the checkpoints the restore variants read (not timed)."""
    import torch

    from functrain import checkpoint as ckpt

    ckpt.save(workdir / "ft_ckpt", build_ft_state(n_params), overwrite=True)
    model, opt = build_torch_state(n_params)
    torch.save({"model": model.state_dict(), "optimizer": opt.state_dict()},
               workdir / "torch_ckpt.pt")


def run_child(args: list[str]) -> dict:
    proc = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"child {args} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--params", type=float, default=100e6)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--dir", default="/tmp/functrain-checkpoint-bench")
    ap.add_argument("--json", default=None)
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    workdir = Path(args.dir)
    if args.child:
        if args.child == "prepare":
            prepare(args.params, workdir)
            print(json.dumps({}))
        else:
            print(json.dumps(measure(args.child, args.params, workdir)))
        return

    layers, width = layer_sizes(args.params)
    n = layers * (width * width + width)
    state_gb = 3 * n * 4 / 1e9
    workdir.mkdir(parents=True, exist_ok=True)
    free_gb = shutil.disk_usage(workdir).free / 1e9
    if free_gb < 6 * state_gb:
        sys.exit(f"need {6 * state_gb:.1f} GB free under {workdir}, have {free_gb:.1f} GB")
    import torch

    print(f"state: {layers} x Linear({width}, {width}) = {n / 1e6:.1f}M params + AdamW moments"
          f" = {state_gb:.2f} GB float32; torch {torch.__version__}, {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.2f} at start")
    run_child(["--child", "prepare", "--params", str(args.params), "--dir", str(workdir)])
    results: dict[str, list[dict]] = {v: [] for v in VARIANTS}
    for r in range(args.rounds):
        order = VARIANTS[r % len(VARIANTS):] + VARIANTS[:r % len(VARIANTS)]
        for v in order:
            results[v].append(run_child(["--child", v, "--params", str(args.params),
                                         "--dir", str(workdir)]))
    load_end = os.getloadavg()[0]
    shutil.rmtree(workdir, ignore_errors=True)

    def med(v: str, key: str) -> float:
        return statistics.median(x[key] for x in results[v])

    print(f"\nmedians of {args.rounds} rounds (fresh process per measurement); "
          f"load average {load_end:.2f} at end")
    print(f"{'variant':<18}{'time s':>9}{'GB/s':>7}{'stall s':>9}{'peak extra MB':>15}"
          f"{'vs torch':>10}")
    base = {"save": med("torch_save", "total_s"), "restore": med("torch_restore", "total_s")}
    summary = {}
    for v in VARIANTS:
        t = med(v, "total_s")
        stall = med(v, "stall_s") if "stall_s" in results[v][0] else None
        ref = base["restore" if "restore" in v else "save"]
        summary[v] = {"total_s": t, "stall_s": stall, "peak_extra_mb": med(v, "peak_extra_mb"),
                      "ratio_to_torch": t / ref, "runs": results[v]}
        stall_s = f"{stall:9.2f}" if stall is not None else f"{'':9}"
        print(f"{v:<18}{t:9.2f}{state_gb / t:7.2f}{stall_s}{med(v, 'peak_extra_mb'):15.0f}"
              f"{t / ref:10.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"params": n, "state_gb": state_gb,
                                               "results": summary}, indent=1))


if __name__ == "__main__":
    main()
