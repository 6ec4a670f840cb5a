"""Prototype: keyed dropout at native speed (issue 16, item 4). Standalone; not used by functrain.

Today keyed dropout hashes every element with Threefry-2x32-20 in an opaque custom operator
(~110 int64 ops per element, written out to memory, then read by the mask multiply): 6-8x
native ``F.dropout``. Options measured here, each a function ``dropout(x, key, p)``:

- ``native``: ``F.dropout`` (the global generator; not reproducible from a key)
- ``threefry``: functrain today, ``with ft.random.keyed(key): F.dropout(x, p)``
- ``fmix``: a short counter-based hash written as plain torch integer ops, so Inductor fuses
  it with the compare and the multiply into one loop that never writes the bits: the
  element index ``j`` and the two 32-bit words ``(k0, k1)`` of ``fold_in(key, i)`` (the draw's
  key, which Threefry already mixed) go through a MurmurHash3-style 32-bit mixer twice,
  ``h = mix(mix(j ^ k0) ^ k1)``; keep where ``h < (1 - p) * 2**32``. The multipliers are
  below 2**31, so no int64 product overflows: the same integers on every device, eager and
  compiled (eager computes them in place, in cache-sized chunks).
- ``generator``: an opaque custom operator that seeds a ``torch.Generator`` from the key and
  calls ``torch.rand`` with it (CPU: the key is read on the host; on CUDA that is a sync).

For each: time of the dropout alone and of a compiled MLP training step that uses it (ratios
to native, medians of rotated rounds), compile time, eager == compiled (bit-exact), and mask
statistics (keep rate; correlation of neighbouring elements and of neighbouring keys).

    python benchmarks/keyed_dropout_proto.py [--rounds 9] [--threads 1]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
import torch.nn.functional as F

import functrain as ft

M32 = 0xFFFFFFFF


# Odd multipliers below 2**31, so that ``x * c`` with ``x < 2**32`` stays below 2**63: int64
# products never overflow, and ``& M32`` gives the product modulo 2**32 exactly, on every device
# and backend. (The first is from Wellons' "lowbias32", the second from his "triple32".)
C1, C2 = 0x7FEB352D, 0x31848BAB


def _mix(h: torch.Tensor) -> torch.Tensor:
    """An invertible 32-bit mixer (xor-shift-multiply, as MurmurHash3's finalizer)."""
    h = h ^ (h >> 16)
    h = (h * C1) & M32
    h = h ^ (h >> 15)
    h = (h * C2) & M32
    return h ^ (h >> 16)


def _mix_(h: torch.Tensor) -> torch.Tensor:
    """`_mix` in place (eager: no temporaries)."""
    h.bitwise_xor_(h >> 16).mul_(C1).bitwise_and_(M32)
    h.bitwise_xor_(h >> 15).mul_(C2).bitwise_and_(M32)
    return h.bitwise_xor_(h >> 16)


def fmix_bits(key: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """32-bit words for ``shape`` from ``key``: ``mix(mix(j ^ k0) ^ k1)`` (+ the high word).

    Traced (compiled) it is ~20 int64 ops that Inductor fuses with their consumer; in eager
    mode the same integers are computed in place in cache-sized chunks.
    """
    n = 1
    for s in shape:
        n *= s
    if torch.compiler.is_compiling() or key.device.type != "cpu":
        j = torch.arange(n, dtype=torch.int64, device=key.device)
        h = _mix(_mix((j & M32) ^ key[0]) ^ key[1])
        if n > 2**32:  # the counter's high word, for draws of more than 2**32 elements
            h = _mix(h ^ (j >> 32))
        return h.view(shape)
    k0, k1 = key.tolist()
    out = torch.empty(n, dtype=torch.int64)
    for start in range(0, n, 1 << 14):
        h = out[start:start + (1 << 14)]
        torch.arange(start, start + len(h), out=h)
        hi = h >> 32 if n > 2**32 else None
        _mix_(_mix_(h.bitwise_and_(M32).bitwise_xor_(k0)).bitwise_xor_(k1))
        if hi is not None:
            _mix_(h.bitwise_xor_(hi))
    return out.view(shape)


def fmix_dropout(x: torch.Tensor, key: torch.Tensor, p: float) -> torch.Tensor:
    keep = fmix_bits(key, tuple(x.shape)) < int((1.0 - p) * 2**32)
    return x * keep.to(x.dtype) * (1.0 / (1.0 - p))


# Inductor inlines a pointwise value into each of its readers and re-generates it there, so
# every ``h ^ (h >> s)`` doubles the code it traces (six of them, in `fmix_bits`: 64x; its
# compile took 10-40 s). `mix3_bits` keeps three xor-shifts (8x) and moves the key words in
# between multiplications: ``j ^ k0``, multiply, xor-shift, ``^ k1``, multiply, xor-shift,
# multiply, xor-shift.
C3 = 0x2C1B3C6D  # odd, below 2**31


def mix3_bits(key: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """32-bit words for ``shape`` from ``key`` with three xor-shifts (see above)."""
    n = 1
    for s in shape:
        n *= s
    if torch.compiler.is_compiling() or key.device.type != "cpu":
        j = torch.arange(n, dtype=torch.int64, device=key.device)
        h = (((j & M32) ^ key[0]) * C1) & M32
        if n > 2**32:
            h = h ^ (j >> 32)
        h = h ^ (h >> 15)
        h = ((h ^ key[1]) * C2) & M32
        h = h ^ (h >> 13)
        h = (h * C3) & M32
        return (h ^ (h >> 16)).view(shape)
    k0, k1 = key.tolist()
    out = torch.empty(n, dtype=torch.int64)
    for start in range(0, n, 1 << 14):
        h = out[start:start + (1 << 14)]
        torch.arange(start, start + len(h), out=h)
        hi = h >> 32 if n > 2**32 else None
        h.bitwise_and_(M32).bitwise_xor_(k0).mul_(C1).bitwise_and_(M32)
        if hi is not None:
            h.bitwise_xor_(hi)
        h.bitwise_xor_(h >> 15).bitwise_xor_(k1).mul_(C2).bitwise_and_(M32)
        h.bitwise_xor_(h >> 13).mul_(C3).bitwise_and_(M32)
        h.bitwise_xor_(h >> 16)
    return out.view(shape)


def mix3_dropout(x: torch.Tensor, key: torch.Tensor, p: float) -> torch.Tensor:
    keep = mix3_bits(key, tuple(x.shape)) < int((1.0 - p) * 2**32)
    return x * keep.to(x.dtype) * (1.0 / (1.0 - p))


@torch.library.custom_op("functrain_proto::keyed_rand", mutates_args=())
def _keyed_rand(key: torch.Tensor, n: int) -> torch.Tensor:
    k0, k1 = key.tolist()
    g = torch.Generator(device=key.device).manual_seed((k0 << 32) | k1)
    return torch.rand(n, generator=g, device=key.device)


@_keyed_rand.register_fake
def _(key, n):
    return key.new_empty(n, dtype=torch.float32)


def generator_dropout(x: torch.Tensor, key: torch.Tensor, p: float) -> torch.Tensor:
    keep = _keyed_rand(key, x.numel()).view(x.shape) >= p
    return x * keep.to(x.dtype) * (1.0 / (1.0 - p))


def native_dropout(x, key, p):
    return F.dropout(x, p)


def threefry_dropout(x, key, p):
    with ft.random.keyed(key):
        return F.dropout(x, p)


VARIANTS = {"native": native_dropout, "threefry": threefry_dropout, "fmix": fmix_dropout,
            "mix3": mix3_dropout, "generator": generator_dropout}


def mlp_step(drop):
    """A compiled training step of a 784-512-512-10 MLP with two dropouts (p=0.1)."""

    def loss_fn(params, x, y, key):
        k1, k2 = ft.random.fold_in(key, 0), ft.random.fold_in(key, 1)
        h = drop(F.relu(x @ params["w1"]), k1, 0.1)
        h = drop(F.relu(h @ params["w2"]), k2, 0.1)
        return F.cross_entropy(h @ params["w3"], y)

    def step(params, x, y, key):
        grads = torch.func.grad(loss_fn)(params, x, y, key)
        return {k: v - 0.01 * grads[k] for k, v in params.items()}

    return step


def timed(fn, *args, n: int) -> float:
    t0 = time.perf_counter()
    for _ in range(n):
        fn(*args)
    return (time.perf_counter() - t0) / n * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch._inductor.config.fx_graph_cache = False  # compile times below are cold
    torch.manual_seed(0)
    key = ft.random.key(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), load "
          f"{os.getloadavg()[0]:.1f}, p=0.1, {args.rounds} rounds")

    # -- correctness: eager == compiled, and mask statistics ----------------------------------
    x = torch.randn(96, 512)  # a shape the timings below do not use: their compiles are fresh
    for name in ("threefry", "fmix", "mix3", "generator"):
        fn = VARIANTS[name]
        comp = torch.compile(fn, fullgraph=True, dynamic=False)
        same = all(torch.equal(fn(x, k, 0.1), comp(x, k, 0.1))
                   for k in (key, ft.random.fold_in(key, 1), ft.random.fold_in(key, 99)))
        keep = torch.stack([(fn(torch.ones(1 << 16), ft.random.fold_in(key, i), 0.5) > 0)
                            for i in range(64)]).float()
        rate = keep.mean().item()
        c = keep - keep.mean()
        nb = (c[:, 1:] * c[:, :-1]).mean().item() / c.var().item()  # neighbours in a draw
        nk = (c[1:] * c[:-1]).mean().item() / c.var().item()  # neighbouring keys
        print(f"{name:<10} eager == compiled: {same}; keep rate at p=0.5: {rate:.4f}; "
              f"correlation of neighbours {nb:+.4f}, of consecutive keys {nk:+.4f}")

    # -- speed: dropout alone, and inside a compiled MLP step ---------------------------------
    results = {}
    for shape in ((128, 512), (64, 32, 26, 26)):
        x = torch.randn(shape)
        fns = {}
        for name, fn in VARIANTS.items():
            fns[f"{name} eager"] = fn
            t0 = time.perf_counter()
            fns[f"{name} compiled"] = torch.compile(fn, fullgraph=True, dynamic=False)
            fns[f"{name} compiled"](x, key, 0.1)
            results[(shape, name, "compile_s")] = time.perf_counter() - t0
        times = {k: [] for k in fns}
        names = list(fns)
        for r in range(args.rounds):
            for k in names[r % len(names):] + names[:r % len(names)]:
                times[k].append(timed(fns[k], x, key, 0.1, n=20 if x.numel() < 1e6 else 3))
        for k in names:
            results[(shape, k)] = statistics.median(times[k])

    params = {"w1": torch.randn(784, 512) * 0.03, "w2": torch.randn(512, 512) * 0.04,
              "w3": torch.randn(512, 10) * 0.04}
    xb, yb = torch.randn(128, 784), torch.randint(10, (128,))
    steps = {}
    for name, fn in VARIANTS.items():
        t0 = time.perf_counter()
        steps[name] = torch.compile(mlp_step(fn), fullgraph=True, dynamic=False)
        steps[name](params, xb, yb, key)
        results[("mlp", name, "compile_s")] = time.perf_counter() - t0
    steps["no dropout"] = torch.compile(mlp_step(lambda h, k, p: h), fullgraph=True)
    steps["no dropout"](params, xb, yb, key)
    times = {k: [] for k in steps}
    names = list(steps)
    for r in range(args.rounds):
        for k in names[r % len(names):] + names[:r % len(names)]:
            times[k].append(timed(steps[k], params, xb, yb, key, n=10))
    for k in names:
        results[("mlp", k)] = statistics.median(times[k])

    for shape in ((128, 512), (64, 32, 26, 26)):
        print(f"\ndropout alone, {shape}: us (x native), compile s")
        for mode in ("eager", "compiled"):
            nat = results[(shape, f"native {mode}")]
            row = "  ".join(f"{n} {results[(shape, f'{n} {mode}')]:.0f} "
                            f"({results[(shape, f'{n} {mode}')] / nat:.2f}x)" for n in VARIANTS)
            print(f"  {mode:<9}{row}")
        print("  compile  " + "  ".join(f"{n} {results[(shape, n, 'compile_s')]:.1f}"
                                        for n in VARIANTS))
    base = results[("mlp", "no dropout")]
    nat = results[("mlp", "native")] - base
    print("\ncompiled MLP step (784-512-512-10, b128, two dropouts): us/step; the dropouts' "
          "share (step - step without dropout) x native's share; compile s")
    for n in list(VARIANTS) + ["no dropout"]:
        t = results[("mlp", n)]
        extra = f"  share {t - base:.0f} us ({(t - base) / nat:.2f}x)" if n in VARIANTS else ""
        comp = f"  compile {results[('mlp', n, 'compile_s')]:.1f} s" if n in VARIANTS else ""
        print(f"  {n:<11}{t:>8.0f}{extra}{comp}")


if __name__ == "__main__":
    main()
