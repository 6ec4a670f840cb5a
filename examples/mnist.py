"""The classic PyTorch MNIST example, written the functrain way.

A CNN (two convolutions, dropout, two linear layers) trained with Adadelta-like settings on
MNIST or Fashion-MNIST from local IDX files; nothing is downloaded:

    python examples/mnist.py --dataset fashion-mnist     # Debian: apt install dataset-fashion-mnist
    python examples/mnist.py --data ~/data/mnist          # a folder holding the four IDX files

The dropout draws from the state's key (``ft.call(..., rng=key)``), so a run is a pure function of
``--seed``: the same seed gives the same run, compiled or eager.
"""

from __future__ import annotations

import argparse
import gzip
import os
import sys

import numpy as np
import torch
from torch import nn

import functrain as ft

DATASETS = {
    "fashion-mnist": ["/usr/share/datasets/fashion-mnist"],
    "mnist": [os.path.expanduser("~/.cache/functrain/mnist"), "data/MNIST/raw", "data/mnist"],
}
FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
         "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3, 1)
        self.conv2 = nn.Conv2d(32, 64, 3, 1)
        self.dropout1 = nn.Dropout(0.25)
        self.dropout2 = nn.Dropout(0.5)
        self.fc1 = nn.Linear(9216, 128)
        self.fc2 = nn.Linear(128, 10)

    def forward(self, x):
        x = self.conv2(self.conv1(x).relu()).relu()
        x = self.dropout1(nn.functional.max_pool2d(x, 2).flatten(1))
        x = self.dropout2(self.fc1(x).relu())
        return self.fc2(x)


def read_idx(path: str) -> np.ndarray:
    """Read one IDX file (optionally gzipped): MNIST's own format."""
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def find(folder: str, name: str) -> str | None:
    for candidate in (name, name + ".gz"):
        if os.path.exists(os.path.join(folder, candidate)):
            return os.path.join(folder, candidate)
    return None


def load(folder: str, split: str):
    paths = [find(folder, name) for name in FILES[split]]
    if None in paths:
        return None
    images, labels = (read_idx(p) for p in paths)
    x = torch.tensor(images, dtype=torch.float32).unsqueeze(1) / 255.0
    return (x - 0.1307) / 0.3081, torch.tensor(labels, dtype=torch.int64)


def load_dataset(args):
    folders = [args.data] if args.data else DATASETS[args.dataset]
    for folder in folders:
        train, test = load(folder, "train"), load(folder, "test")
        if train is not None and test is not None:
            return train, test
    sys.exit(
        f"No {args.dataset if not args.data else 'MNIST-format'} data found in: "
        f"{', '.join(folders)}.\nExpected the IDX files {', '.join(sum(FILES.values(), ()))} "
        "(optionally .gz). Options:\n"
        "  --dataset fashion-mnist   reads /usr/share/datasets/fashion-mnist "
        "(Debian: apt install dataset-fashion-mnist)\n"
        "  --data DIR                reads the four IDX files from DIR (MNIST or Fashion-MNIST)\n"
        "  python examples/mnist1d.py  needs no files at all")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", choices=sorted(DATASETS), default="mnist")
    parser.add_argument("--data", help="folder with the four IDX files")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--max-steps", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--compile", default="auto")
    parser.add_argument("--run-dir", default=None)
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    train, test = load_dataset(args)
    model = Net()
    steps_per_epoch = len(train[1]) // args.batch_size
    schedule = ft.optim.exponential_decay(args.lr, transition_steps=steps_per_epoch,
                                          decay_rate=0.7)
    state = ft.TrainState.create(model, ft.optim.adam(schedule), seed=args.seed)

    def step(state, batch):
        x, y = batch
        key = ft.random.fold_in(state.rng, state.step)  # a fresh key every step

        def loss_fn(params):
            logits, _ = ft.call(model, params, state.buffers, x, rng=key)
            return nn.functional.cross_entropy(logits, y), logits

        grads, (loss, logits) = torch.func.grad_and_value(loss_fn, has_aux=True)(state.params)
        return state.apply_gradients(grads), {
            "loss": loss, "accuracy": ft.metrics.Accuracy.from_logits(logits, y)}

    def eval_fn(state, batch):
        x, y = batch
        logits, _ = ft.call(model, state.params, state.buffers, x, train=False)
        return {"loss": ft.metrics.Mean.from_value(
                    nn.functional.cross_entropy(logits, y), weight=len(y)),
                "accuracy": ft.metrics.Accuracy.from_logits(logits, y)}

    train_loader = ft.data.ArrayLoader(train, args.batch_size, shuffle=True, seed=args.seed,
                                       drop_last=True)
    test_loader = ft.data.ArrayLoader(test, 1000)
    state = ft.fit(step, state, train_loader, epochs=args.epochs, max_steps=args.max_steps,
                   eval_fn=eval_fn, eval_loader=test_loader, compile=args.compile,
                   run_dir=args.run_dir)
    result = ft.evaluate(eval_fn, state, test_loader, compile=args.compile)
    print(f"test accuracy: {result['accuracy']:.2%} (test loss {result['loss']:.4f})")


if __name__ == "__main__":
    main()
