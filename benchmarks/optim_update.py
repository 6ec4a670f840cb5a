"""Time one optimizer update: functrain.optim (eager, and compiled with in-place write-back)
against its torch.optim counterpart (foreach / fused where torch has them), on an MLP-like
pytree of (512, 384) / (384, 512) weights and their biases (25 blocks: 100 leaves, ~9.9M
parameters, by default).

    python benchmarks/optim_update.py [--optimizers adamw,muon,adafactor,schedule_free_adamw]
                                      [--blocks 25] [--rounds 7] [--steps 3] [--device cpu]

Optimizers and their references:

* ``adamw``: torch.optim.AdamW, foreach and fused.
* ``muon``: torch.optim.Muon on the 2-D weights (single-tensor: torch has no foreach Muon) plus
  torch.optim.AdamW (foreach) on the biases, the split torch documents; ours is `optim.muon`,
  which routes the biases to AdamW itself. Both run Newton-Schulz in bfloat16.
* ``adafactor``: torch.optim.Adafactor, foreach and single-tensor; ours is `optim.adafactor`
  with torch's mapping (relative step ``min(lr, 1/sqrt(t))``, factored 2-D leaves, ``d=1``
  clipping, weight decay ``lr * wd``).
* ``schedule_free_adamw``: torch.optim has no schedule-free optimizer; the reference is
  torch.optim.AdamW (foreach and fused), the update it replaces.

The compiled variant is what a runner does: one ``torch.compile(fullgraph=True)`` function that
computes the pure update and copies the new params and state into the old tensors with
``torch._foreach_copy_``, so inductor turns the whole step into in-place kernels. Before
timing, each optimizer's first compiled and eager steps are checked against its torch
reference's first step. Rounds are interleaved (every variant once per round, after a
warm-up); the tables show medians per step. The same gradients are used at every step.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from functrain import optim, tree

LR, WEIGHT_DECAY = 1e-3, 1e-2


def make_params(device: torch.device, blocks: int = 25) -> dict[str, torch.Tensor]:
    """4 leaves per block: an MLP-like stack of (512, 384) / (384, 512) layers."""
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


# ---------------------------------------------------------------------------------------------
# Ours and the torch references, per optimizer.

OURS: dict[str, Callable[[], optim.GradientTransformation]] = {
    "adamw": lambda: optim.adamw(LR, weight_decay=WEIGHT_DECAY),
    "muon": lambda: optim.muon(LR, weight_decay=WEIGHT_DECAY),
    "adafactor": lambda: optim.adafactor(
        learning_rate=lambda t: torch.clamp((t + 1.0) ** -0.5, max=LR),
        min_dim_size_to_factor=1, clipping_threshold=1.0, weight_decay_rate=LR * WEIGHT_DECAY,
        eps=0.0),
    "schedule_free_adamw": lambda: optim.schedule_free_adamw(LR, weight_decay=WEIGHT_DECAY),
}


def torch_step(params: dict, grads: dict, make: Callable[[list, list], list]) -> tuple:
    """Leaf tensors with ``.grad`` set, and a step function over the optimizers ``make`` builds
    from (2-D params, other params)."""
    names = list(params)
    ps = {k: torch.nn.Parameter(params[k].clone()) for k in names}
    for k in names:
        ps[k].grad = grads[k].clone()
    matrices = [ps[k] for k in names if ps[k].ndim == 2]
    others = [ps[k] for k in names if ps[k].ndim != 2]
    opts = make(matrices, others)

    def step():
        for o in opts:
            o.step()

    return step, ps


REFERENCES: dict[str, dict[str, Callable[[list, list], list]]] = {
    "adamw": {
        "foreach": lambda m, o: [torch.optim.AdamW(m + o, lr=LR, weight_decay=WEIGHT_DECAY,
                                                   foreach=True)],
        "fused": lambda m, o: [torch.optim.AdamW(m + o, lr=LR, weight_decay=WEIGHT_DECAY,
                                                 fused=True)],
    },
    "muon": {
        "single-tensor + AdamW foreach": lambda m, o: [
            torch.optim.Muon(m, lr=LR, weight_decay=WEIGHT_DECAY),
            torch.optim.AdamW(o, lr=LR, weight_decay=0.01, foreach=True)],
    },
    "adafactor": {
        "foreach": lambda m, o: [torch.optim.Adafactor(m + o, lr=LR, weight_decay=WEIGHT_DECAY,
                                                       foreach=True)],
        "single-tensor": lambda m, o: [torch.optim.Adafactor(
            m + o, lr=LR, weight_decay=WEIGHT_DECAY, foreach=False)],
    },
    "schedule_free_adamw": {
        "AdamW foreach": lambda m, o: [torch.optim.AdamW(m + o, lr=LR,
                                                         weight_decay=WEIGHT_DECAY,
                                                         foreach=True)],
        "AdamW fused": lambda m, o: [torch.optim.AdamW(m + o, lr=LR, weight_decay=WEIGHT_DECAY,
                                                       fused=True)],
    },
}


def ours_eager(make: Callable[[], optim.GradientTransformation], params, grads):
    opt = make()
    box = {"params": tree.map(torch.clone, params)}
    box["state"] = opt.init(box["params"])

    def step():  # pure: new params and state every step
        updates, box["state"] = opt.update(grads, box["state"], box["params"])
        box["params"] = optim.apply_updates(box["params"], updates)

    return step, box


def ours_compiled(make: Callable[[], optim.GradientTransformation], params, grads):
    opt = make()
    params = tree.map(torch.clone, params)
    state = opt.init(params)

    @torch.compile(fullgraph=True)
    def update_in_place(params, state, grads):
        updates, new_state = opt.update(grads, state, params)
        new_params = optim.apply_updates(params, updates)
        torch._foreach_copy_(tree.leaves((params, state)), tree.leaves((new_params, new_state)))

    return (lambda: update_in_place(params, state, grads)), {"params": params, "state": state}


def bench(name: str, params, grads, args, device) -> None:
    eager_step, eager_box = ours_eager(OURS[name], params, grads)
    compiled_step, compiled_box = ours_compiled(OURS[name], params, grads)
    refs = {f"torch {name} {k}": torch_step(params, grads, make)
            for k, make in REFERENCES[name].items()}
    t0 = time.perf_counter()
    eager_step()
    compiled_step()
    sync(device)
    compile_s = time.perf_counter() - t0
    if name != "schedule_free_adamw":  # a different method: no one-step agreement to check
        first_step, first_params = next(iter(refs.values()))
        first_step()
        for box, compiled in ((eager_box, False), (compiled_box, True)):
            # Compiled, inductor fuses the bfloat16 Newton-Schulz matmuls with their additions
            # (fewer bfloat16 roundings than eager): Muon's step then differs by ~1% of lr.
            atol = 1e-2 * LR if compiled and name == "muon" else 1e-6
            for k in ("blocks.0.up.weight", "blocks.0.up.bias"):
                torch.testing.assert_close(box["params"][k], first_params[k].detach(),
                                           rtol=1e-4, atol=atol)
        check = "agree with the torch reference's"
    else:
        check = "are finite (torch has no schedule-free reference)"
        assert all(torch.isfinite(p).all() for p in compiled_box["params"].values())
    print(f"\n## {name}: first compiled step (compile included) {compile_s:.1f} s; one-step "
          f"results {check}")

    variants = {k: step for k, (step, _) in refs.items()}
    variants[f"functrain {name} eager (pure)"] = eager_step
    variants[f"functrain {name} compiled (in-place)"] = compiled_step
    for fn in variants.values():  # warm-up
        for _ in range(2):
            fn()
    sync(device)
    times: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(args.rounds):
        for k, fn in variants.items():
            sync(device)
            t = time.perf_counter()
            for _ in range(args.steps):
                fn()
            sync(device)
            times[k].append((time.perf_counter() - t) / args.steps)

    bases = {k: statistics.median(times[k]) for k in refs}
    width = max(len(k) for k in variants) + 2
    head = "".join(f" vs {k.removeprefix(f'torch {name} ')} |" for k in bases)
    print(f"\n| {'variant':<{width}} | median ms/step | min ms/step |{head}")
    print(f"|{'-' * (width + 2)}|----------------|-------------|"
          + "".join("-" * (len(k.removeprefix(f'torch {name} ')) + 5) + "|" for k in bases))
    for k, ts in times.items():
        m = statistics.median(ts)
        cols = "".join(f" {m / b:>{len(r.removeprefix(f'torch {name} ')) + 2}.2f}x |"
                       for r, b in bases.items())
        print(f"| {k:<{width}} | {m * 1e3:>14.2f} | {min(ts) * 1e3:>11.2f} |{cols}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--optimizers", default="adamw,muon,adafactor,schedule_free_adamw")
    parser.add_argument("--blocks", type=int, default=25, help="4 leaves per block")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--steps", type=int, default=3, help="update steps per timing")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    names = [n.strip() for n in args.optimizers.split(",") if n.strip()]
    unknown = sorted(set(names) - set(OURS))
    if unknown:
        parser.error(f"--optimizers: expected names among {sorted(OURS)}, got {unknown}")

    params = make_params(device, args.blocks)
    g = torch.Generator().manual_seed(1)
    grads = {k: torch.randn(v.shape, generator=g).to(device) * 1e-2 for k, v in params.items()}
    n = sum(p.numel() for p in params.values())
    print(f"torch {torch.__version__}, device {device}, threads {torch.get_num_threads()}, "
          f"{len(params)} leaves, {n / 1e6:.2f}M params, {args.steps} steps per timing, "
          f"{args.rounds} rounds, the same gradients every step")
    for name in names:
        bench(name, params, grads, args, device)


if __name__ == "__main__":
    main()
