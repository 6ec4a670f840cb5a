"""Train the MNIST-1D paper's CNN with functrain: the README's main job.

MNIST-1D (Greydanus, 2020, "Scaling down deep learning") is generated here by the `mnist1d`
package from its ten 1-D templates (never downloaded): 4000 training and 1000 test sequences
of length 40. The paper reports ~94% test accuracy for this CNN.

    python examples/mnist1d.py                # ~6000 steps, a few minutes on 2 CPU cores
    python examples/mnist1d.py --steps 500    # a quick look
"""

from __future__ import annotations

import argparse
import os
import sys

import torch
from torch import nn

import functrain as ft


class ConvNet(nn.Module):
    """The paper's CNN: three strided 1-D convolutions and a linear read-out."""

    def __init__(self, channels: int = 25):
        super().__init__()
        self.conv1 = nn.Conv1d(1, channels, 5, stride=2, padding=1)
        self.conv2 = nn.Conv1d(channels, channels, 3, stride=2, padding=1)
        self.conv3 = nn.Conv1d(channels, channels, 3, stride=2, padding=1)
        self.linear = nn.Linear(channels * 5, 10)

    def forward(self, x):
        h = x.unsqueeze(1)  # (batch, 40) -> (batch, 1, 40)
        h = self.conv1(h).relu()
        h = self.conv2(h).relu()
        h = self.conv3(h).relu()
        return self.linear(h.flatten(1))


def load_mnist1d():
    """Generate MNIST-1D locally with the paper's default arguments (seed 42)."""
    # This file is itself named mnist1d.py and Python puts its folder first on sys.path;
    # drop that entry so `import mnist1d` finds the package, not this script.
    here = os.path.dirname(os.path.abspath(__file__))
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != here]
    from mnist1d.data import get_dataset_args, make_dataset

    data = make_dataset(get_dataset_args())
    x, y = torch.tensor(data["x"], dtype=torch.float32), torch.tensor(data["y"])
    x_test, y_test = torch.tensor(data["x_test"], dtype=torch.float32), torch.tensor(data["y_test"])
    return (x, y), (x_test, y_test)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=6000)
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--lr", type=float, default=1e-2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--compile", default="auto")
    parser.add_argument("--precision", default="32", help="32, bf16-mixed, 16-mixed, bf16-true")
    parser.add_argument("--run-dir", default=None)
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    train, test = load_mnist1d()
    model = ConvNet()
    state = ft.TrainState.create(model, ft.optim.adam(args.lr), seed=args.seed)

    def step(state, batch):
        x, y = batch

        def loss_fn(params):
            logits, _ = ft.call(model, params, state.buffers, x)
            return nn.functional.cross_entropy(logits, y), logits

        # ft.grad_and_value: torch.func.grad_and_value, on plain autograd when run eagerly.
        grads, (loss, logits) = ft.grad_and_value(loss_fn, has_aux=True)(state.params)
        return state.apply_gradients(grads), {
            "loss": loss, "accuracy": ft.metrics.Accuracy.from_logits(logits, y)}

    def eval_fn(state, batch):
        x, y = batch
        logits, _ = ft.call(model, state.params, state.buffers, x)
        return {"loss": ft.metrics.Mean.from_value(
                    nn.functional.cross_entropy(logits, y), weight=len(y)),
                "accuracy": ft.metrics.Accuracy.from_logits(logits, y)}

    train_loader = ft.data.ArrayLoader(train, args.batch_size, shuffle=True, seed=args.seed,
                                       drop_last=True)
    test_loader = ft.data.ArrayLoader(test, 500)
    state = ft.fit(step, state, train_loader, max_steps=args.steps, eval_fn=eval_fn,
                   eval_loader=test_loader, eval_every=1000, callbacks=[ft.Logging(every=100)],
                   compile=args.compile, precision=args.precision, run_dir=args.run_dir)
    result = ft.evaluate(eval_fn, state, test_loader, compile=args.compile,
                         precision=args.precision)
    print(f"test accuracy: {result['accuracy']:.2%} (test loss {result['loss']:.4f}) "
          f"after {int(state.step)} steps")


if __name__ == "__main__":
    main()
