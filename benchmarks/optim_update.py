"""Time one AdamW update: functrain.optim (eager, and compiled with in-place write-back) against
torch.optim.AdamW (foreach=True and fused=True), on a ~10M-parameter pytree of 100 leaves.

    python benchmarks/optim_update.py [--rounds 7] [--steps 3] [--device cpu]

The compiled variant is what a runner does: one ``torch.compile(fullgraph=True)`` function that
computes the pure update and copies the new params and state into the old tensors with
``torch._foreach_copy_``, so inductor turns the whole step into in-place kernels. Rounds are
interleaved (every variant once per round, after a warm-up); the table shows medians per step.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from functrain import optim, tree

LR, WEIGHT_DECAY = 1e-3, 1e-2


def make_params(device: torch.device, blocks: int = 25) -> dict[str, torch.Tensor]:
    """100 leaves, ~9.9M parameters: an MLP-like stack of (512, 384) / (384, 512) layers."""
    g = torch.Generator().manual_seed(0)
    params = {}
    for i in range(blocks):
        for name, shape in (("up.weight", (512, 384)), ("up.bias", (512,)),
                            ("down.weight", (384, 512)), ("down.bias", (384,))):
            params[f"blocks.{i}.{name}"] = (torch.randn(shape, generator=g) * 0.02).to(device)
    return params


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def torch_variant(params, grads, **kw):
    ps = [torch.nn.Parameter(p.clone()) for p in params.values()]
    for p, g in zip(ps, grads.values(), strict=True):
        p.grad = g.clone()
    opt = torch.optim.AdamW(ps, lr=LR, weight_decay=WEIGHT_DECAY, **kw)
    return opt.step


def ours_eager(params, grads):
    opt = optim.adamw(LR, weight_decay=WEIGHT_DECAY)
    box = {"params": tree.map(torch.clone, params)}
    box["state"] = opt.init(box["params"])

    def step():  # pure: new params and state every step
        updates, box["state"] = opt.update(grads, box["state"], box["params"])
        box["params"] = optim.apply_updates(box["params"], updates)

    return step, box


def ours_compiled(params, grads):
    opt = optim.adamw(LR, weight_decay=WEIGHT_DECAY)
    params = tree.map(torch.clone, params)
    state = opt.init(params)

    @torch.compile(fullgraph=True)
    def update_in_place(params, state, grads):
        updates, new_state = opt.update(grads, state, params)
        new_params = optim.apply_updates(params, updates)
        torch._foreach_copy_(tree.leaves((params, state)), tree.leaves((new_params, new_state)))

    return (lambda: update_in_place(params, state, grads)), {"params": params, "state": state}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--steps", type=int, default=3, help="update steps per timing")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    params = make_params(device)
    g = torch.Generator().manual_seed(1)
    grads = {k: torch.randn(v.shape, generator=g).to(device) * 1e-2 for k, v in params.items()}
    n = sum(p.numel() for p in params.values())
    print(f"torch {torch.__version__}, device {device}, threads {torch.get_num_threads()}, "
          f"{len(params)} leaves, {n / 1e6:.2f}M params, {args.steps} steps per timing, "
          f"{args.rounds} rounds")

    # Correctness first: one step of every variant from the same start agrees.
    eager_step, eager_box = ours_eager(params, grads)
    compiled_step, compiled_box = ours_compiled(params, grads)
    t0 = time.perf_counter()
    eager_step()
    compiled_step()
    sync(device)
    compile_s = time.perf_counter() - t0
    ref = torch.nn.Parameter(params["blocks.0.up.weight"].clone())
    ref.grad = grads["blocks.0.up.weight"]
    torch.optim.AdamW([ref], lr=LR, weight_decay=WEIGHT_DECAY).step()
    for box in (eager_box, compiled_box):
        torch.testing.assert_close(box["params"]["blocks.0.up.weight"], ref.detach())
    print(f"first compiled step (compile included): {compile_s:.1f} s; one-step results agree "
          "with torch.optim.AdamW")

    variants = {
        "torch AdamW foreach": torch_variant(params, grads, foreach=True),
        "torch AdamW fused": torch_variant(params, grads, fused=True),
        "functrain adamw eager (pure)": eager_step,
        "functrain adamw compiled (in-place)": compiled_step,
    }
    for fn in variants.values():  # warm-up
        for _ in range(2):
            fn()
    sync(device)
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(args.rounds):
        for name, fn in variants.items():
            sync(device)
            t = time.perf_counter()
            for _ in range(args.steps):
                fn()
            sync(device)
            times[name].append((time.perf_counter() - t) / args.steps)

    base = statistics.median(times["torch AdamW foreach"])
    fused = statistics.median(times["torch AdamW fused"])
    print(f"\n| {'variant':<36} | {'median ms/step':>14} | {'min ms/step':>11} "
          f"| {'vs torch foreach':>16} | {'vs torch fused':>14} |")
    print(f"|{'-' * 38}|{'-' * 16}|{'-' * 13}|{'-' * 18}|{'-' * 16}|")
    for name, ts in times.items():
        m = statistics.median(ts)
        print(f"| {name:<36} | {m * 1e3:>14.2f} | {min(ts) * 1e3:>11.2f} "
              f"| {m / base:>15.2f}x | {m / fused:>13.2f}x |")


if __name__ == "__main__":
    main()
