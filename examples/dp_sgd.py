"""Differentially private training (DP-SGD) of the MNIST-1D CNN with functrain.

Per-example gradients (``ft.per_example_grads``: vmap over grad), each clipped to L2 norm
``--clip``, summed, Gaussian noise of std ``--noise * --clip`` drawn from the state's key, and
divided by the batch size (``ft.privacy.dp_grads``); the whole step compiles as one graph.
The privacy spent is computed by opacus' accountant (``ft.privacy.epsilon``; needs
``pip install opacus``). Batches are drawn with Poisson sampling as DP-SGD's analysis
assumes, padded to a fixed size with zero-weight rows so that the step compiles once.

    python examples/dp_sgd.py                   # 3000 steps
    python examples/dp_sgd.py --steps 300       # a quick look
"""

from __future__ import annotations

import argparse
import importlib.util
import os

import torch
from torch import nn

import functrain as ft

HERE = os.path.dirname(os.path.abspath(__file__))


def _mnist1d_example():
    spec = importlib.util.spec_from_file_location("mnist1d_example",
                                                  os.path.join(HERE, "mnist1d.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class PoissonBatches:
    """Each example joins a batch with probability ``rate`` (Poisson sampling); a batch is
    padded (or, rarely, cut) to ``size`` rows, the padding marked by weight 0."""

    def __init__(self, x, y, rate: float, size: int, steps: int, seed: int = 0) -> None:
        self.x, self.y, self.rate, self.size, self.steps = x, y, rate, size, steps
        self.g = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return self.steps

    def __iter__(self):
        for _ in range(self.steps):
            idx = torch.nonzero(torch.rand(len(self.x), generator=self.g) < self.rate)[:, 0]
            idx = idx[: self.size]
            w = torch.zeros(self.size)
            w[: len(idx)] = 1.0
            full = torch.cat([idx, idx.new_zeros(self.size - len(idx))])
            yield self.x[full], self.y[full], w


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--batch-size", type=int, default=100, help="expected batch size")
    parser.add_argument("--clip", type=float, default=1.0)
    parser.add_argument("--noise", type=float, default=1.0)
    parser.add_argument("--lr", type=float, default=0.5)
    parser.add_argument("--delta", type=float, default=1e-5)
    parser.add_argument("--compile", default="auto")
    parser.add_argument("--run-dir", default=None)
    args = parser.parse_args()

    example = _mnist1d_example()
    (x, y), test = example.load_mnist1d()
    torch.manual_seed(0)
    model = example.ConvNet()
    rate = args.batch_size / len(x)

    def loss_fn(params, xb, yb, wb):
        # one example at a time: its weight (0 for padding) scales its loss, so a padded
        # row's gradient is zero and it adds nothing but noise-free zeros to the sum
        logits, _ = ft.call(model, params, {}, xb)
        return (nn.functional.cross_entropy(logits, yb, reduction="none") * wb).sum()

    def step(state, batch):
        key = ft.random.fold_in(state.rng, state.step)
        # dp_grads divides by the padded size; DP-SGD divides by the expected batch size
        grads, loss = ft.privacy.dp_grads(loss_fn, l2_norm_clip=args.clip,
                                          noise_multiplier=args.noise)(state.params, key, *batch)
        scale = batch[0].shape[0] / args.batch_size
        grads = ft.tree.map(lambda g: g * scale, grads)
        return state.apply_gradients(grads), {"loss": loss * scale}

    def eval_fn(state, batch):
        xb, yb = batch
        logits, _ = ft.call(model, state.params, {}, xb)
        return {"accuracy": ft.metrics.Accuracy.from_logits(logits, yb)}

    size = int(args.batch_size * 1.5)
    state = ft.TrainState.create(model, ft.optim.sgd(args.lr), seed=0)
    state = ft.fit(step, state, PoissonBatches(x, y, rate, size, args.steps), epochs=1,
                   eval_fn=eval_fn, eval_loader=ft.data.ArrayLoader(test, 500),
                   callbacks=[ft.Logging(every=max(1, args.steps // 20))], compile=args.compile,
                   run_dir=args.run_dir)
    acc = ft.evaluate(eval_fn, state, ft.data.ArrayLoader(test, 500), compile=args.compile)
    eps = ft.privacy.epsilon(noise_multiplier=args.noise, sample_rate=rate, steps=args.steps,
                             delta=args.delta)
    print(f"test accuracy: {acc['accuracy']:.2%} after {args.steps} DP-SGD steps; "
          f"privacy: epsilon = {eps:.2f} at delta = {args.delta:g} "
          f"(noise multiplier {args.noise}, sample rate {rate:.4f}, clip {args.clip})")


if __name__ == "__main__":
    main()
