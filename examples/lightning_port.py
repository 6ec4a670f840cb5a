"""Lightning's classic ``LitMNIST`` tutorial, ported to functrain line by line.

The model, data split and optimizer of the tutorial (an MLP with dropout, Adam 2e-4,
55,000/5,000 train/validation split, three epochs), on Fashion-MNIST or MNIST from local IDX
files; nothing is downloaded:

    python examples/lightning_port.py                   # Debian: apt install dataset-fashion-mnist
    python examples/lightning_port.py --data ~/data/mnist   # a folder holding the four IDX files

What replaces what (Lightning on the left):

================================================  ================================================
Lightning                                         functrain
================================================  ================================================
``class LitMNIST(LightningModule)``               a plain ``nn.Module`` (`make_model`) and two
                                                  pure functions, `step` and `eval_fn`
``def forward(self, x): ...log_softmax(...)``     ``ft.call(model, params, buffers, x, ...)``
``def training_step(self, batch, batch_idx):``    ``def step(state, batch):``
``    loss = F.nll_loss(self(x), y)``             ``grads, loss = grad_and_value(loss_fn)(...)``
``    return loss``                               ``return state.apply_gradients(grads),``
                                                  ``{"loss": loss}``
``def validation_step(self, batch, batch_idx):``  ``def eval_fn(state, batch):``
``    self.val_accuracy.update(preds, y)``        ``return {"loss": ..., "acc":``
``    self.log("val_acc", self.val_accuracy)``    ``ft.metrics.Accuracy.from_logits(logits, y)}``
``def configure_optimizers(self):``               ``ft.TrainState.create(model,``
``    return Adam(self.parameters(), lr=2e-4)``   ``ft.optim.adam(2e-4), seed=seed)``
``seed_everything(42)``                           ``ft.seed_everything(42)``
``random_split(mnist_full, [55000, 5000])``       a seeded permutation of the tensors
``DataLoader(train, batch_size=64)``              ``ft.data.ArrayLoader(train, 64, shuffle=True)``
``Trainer(max_epochs=3, logger=CSVLogger(...))``  ``ft.fit(step, state, loader, epochs=3,``
``trainer.fit(model)``                            ``eval_fn=eval_fn, eval_loader=val_loader,``
                                                  ``run_dir=...)`` (CSV, JSONL, TensorBoard)
``trainer.test()``                                ``ft.evaluate(eval_fn, state, test_loader)``
``trainer.predict(model, loader)``                ``ft.predict(fn, state, loader)``
``Trainer(fast_dev_run=True)``                    ``--fast-dev-run``: ``ft.data.take(loader, 1)``
================================================  ================================================

Dropout draws from the state's key (``rng=``), so the run is a function of ``--seed``.
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

FOLDERS = {"fashion-mnist": "/usr/share/datasets/fashion-mnist",
           "mnist": os.path.expanduser("~/.cache/functrain/mnist")}
FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
         "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}


def make_model(hidden_size: int = 64, num_classes: int = 10) -> nn.Module:
    """LitMNIST's ``self.model``: an MLP with dropout over the 28x28 pixels."""
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(28 * 28, hidden_size), nn.ReLU(), nn.Dropout(0.1),
        nn.Linear(hidden_size, hidden_size), nn.ReLU(), nn.Dropout(0.1),
        nn.Linear(hidden_size, num_classes),
    )


def read_idx(path: str) -> np.ndarray:
    """One IDX file (optionally gzipped), MNIST's own format."""
    with (gzip.open if path.endswith(".gz") else open)(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def load_split(folder: str, split: str):
    paths = []
    for name in FILES[split]:
        found = [p for p in (os.path.join(folder, name), os.path.join(folder, name + ".gz"))
                 if os.path.exists(p)]
        if not found:
            return None
        paths.append(found[0])
    images, labels = (read_idx(p) for p in paths)
    x = torch.tensor(images, dtype=torch.float32).unsqueeze(1) / 255.0
    x = (x - 0.1307) / 0.3081  # the tutorial's transforms.Normalize
    return x, torch.tensor(labels, dtype=torch.int64)


def load(args):
    folder = args.data or FOLDERS[args.dataset]
    train, test = load_split(folder, "train"), load_split(folder, "test")
    if train is None or test is None:
        sys.exit(f"No {'MNIST-format' if args.data else args.dataset} data in {folder!r}.\n"
                 f"Expected the IDX files {', '.join(sum(FILES.values(), ()))} (optionally .gz)."
                 "\nOptions:\n  --dataset fashion-mnist   reads /usr/share/datasets/fashion-mnist"
                 " (Debian: apt install dataset-fashion-mnist)\n"
                 "  --data DIR                reads the four IDX files from DIR")
    return train, test


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", choices=sorted(FOLDERS), default="fashion-mnist")
    parser.add_argument("--data", help="folder with the four IDX files")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--val-size", type=int, default=5000)
    parser.add_argument("--compile", default="auto")
    parser.add_argument("--run-dir", default=None)
    parser.add_argument("--fast-dev-run", action="store_true", help="one batch of each, no logs")
    args = parser.parse_args()

    ft.seed_everything(args.seed)  # model init included
    (x, y), test = load(args)
    order = torch.randperm(len(y))  # random_split(mnist_full, [55000, 5000])
    val_idx, train_idx = order[:args.val_size], order[args.val_size:]
    model = make_model()
    state = ft.TrainState.create(model, ft.optim.adam(args.lr), seed=args.seed)

    def step(state, batch):  # training_step
        x, y = batch
        key = ft.random.fold_in(state.rng, state.step)  # this step's dropout key

        def loss_fn(params):
            logits, _ = ft.call(model, params, state.buffers, x, rng=key, train=True)
            return nn.functional.nll_loss(logits.log_softmax(1), y)

        grads, loss = torch.func.grad_and_value(loss_fn)(state.params)
        return state.apply_gradients(grads), {"loss": loss}

    def eval_fn(state, batch):  # validation_step / test_step
        x, y = batch
        logits, _ = ft.call(model, state.params, state.buffers, x, train=False)
        loss = nn.functional.nll_loss(logits.log_softmax(1), y)
        return {"loss": ft.metrics.Mean.from_value(loss, weight=len(y)),
                "acc": ft.metrics.Accuracy.from_logits(logits, y)}

    train_loader = ft.data.ArrayLoader((x[train_idx], y[train_idx]), args.batch_size,
                                       shuffle=True, seed=args.seed)
    val_loader = ft.data.ArrayLoader((x[val_idx], y[val_idx]), 1000)
    test_loader = ft.data.ArrayLoader(test, 1000)
    epochs, log = args.epochs, ft.Logging()
    if args.fast_dev_run:  # Trainer(fast_dev_run=True)
        train_loader, val_loader = ft.data.take(train_loader, 1), ft.data.take(val_loader, 1)
        test_loader, epochs, log = ft.data.take(test_loader, 1), 1, ft.Logging.quiet()
    state = ft.fit(step, state, train_loader, epochs=epochs, eval_fn=eval_fn,
                   eval_loader=val_loader, compile=args.compile, callbacks=[log],
                   run_dir=args.run_dir)
    result = ft.evaluate(eval_fn, state, test_loader, compile=args.compile)  # trainer.test()
    print(f"test accuracy: {result['acc']:.2%} (test loss {result['loss']:.4f})")

    def predict_fn(state, x):  # trainer.predict(): class labels of the first test images
        return ft.call(model, state.params, state.buffers, x, train=False)[0].argmax(1)

    labels = ft.predict(predict_fn, state, ft.data.take(ft.data.ArrayLoader(test[0], 8), 1))
    print(f"predicted labels of the first 8 test images: {labels.tolist()}")


if __name__ == "__main__":
    main()
