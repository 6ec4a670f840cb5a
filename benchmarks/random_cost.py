"""What keyed dropout costs: native ``F.dropout`` vs ``F.dropout`` inside ``keyed(key)``.

Times one dropout (float32, p=0.1) on a (128, 512) and a (64, 32, 26, 26) tensor, eager and
compiled with Inductor, each variant timed in interleaved rounds (so machine load hits all
alike); prints medians and the keyed/native ratios. The figures in benchmarks/README.md
(random_cost.py) come from this script.

    python benchmarks/random_cost.py [--rounds 15] [--threads 2] [--device cpu]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

import functrain.random as R

P = 0.1
SHAPES = [(128, 512), (64, 32, 26, 26)]


def native(x, key):
    return F.dropout(x, P)


def keyed(x, key):
    with R.keyed(key):
        return F.dropout(x, P)


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_once(fn, x, key, device) -> float:
    _sync(device)
    t0 = time.perf_counter()
    fn(x, key)
    _sync(device)
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    key = R.key(0, device=device)
    print(f"torch {torch.__version__}, {device}, {torch.get_num_threads()} threads, p={P}")
    print(f"{'shape':<20}{'variant':<12}{'native ms':>11}{'keyed ms':>11}{'keyed/native':>14}")
    for shape in SHAPES:
        x = torch.randn(shape, device=device)
        variants = {
            "eager": (native, keyed),
            "compiled": (
                torch.compile(native, fullgraph=True),
                torch.compile(keyed, fullgraph=True),
            ),
        }
        times: dict[tuple[str, str], list[float]] = {}
        for fns in variants.values():  # warm-up (and compile)
            for fn in fns:
                for _ in range(3):
                    fn(x, key)
        for _ in range(args.rounds):
            for name, (nat, kd) in variants.items():
                times.setdefault((name, "native"), []).append(time_once(nat, x, key, device))
                times.setdefault((name, "keyed"), []).append(time_once(kd, x, key, device))
        for name in variants:
            n = statistics.median(times[(name, "native")]) * 1e3
            k = statistics.median(times[(name, "keyed")]) * 1e3
            print(f"{str(shape):<20}{name:<12}{n:>11.2f}{k:>11.2f}{k / n:>14.2f}")


if __name__ == "__main__":
    main()
