"""A learning-rate sweep of 16 MNIST-1D CNNs trained as ONE population, in one compiled step.

Every member is the MNIST-1D paper's CNN (examples/mnist1d.py) with its own seed and its own
Adam learning rate (held in the optimizer state by ``ft.optim.inject_hyperparams``);
``ft.population.vmap`` runs the one-model step for all of them at once, so ``fit`` compiles
a single graph for the whole sweep. A member whose validation loss stops improving is frozen
(``ft.population.EarlyStopping``) while the others train on.

    python examples/population_sweep.py                 # 16 learning rates, 3000 steps
    python examples/population_sweep.py --members 4 --steps 300   # a quick look

Prints a table of final test accuracy per learning rate, and writes sweep.png next to the
run's logs when matplotlib is installed.
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
    """The model and data of examples/mnist1d.py (imported by path: same folder)."""
    spec = importlib.util.spec_from_file_location("mnist1d_example",
                                                  os.path.join(HERE, "mnist1d.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def step(state, batch):
    x, y = batch

    def loss_fn(params):
        logits, _ = ft.call(state.module, params, state.buffers, x)
        return nn.functional.cross_entropy(logits, y), logits

    grads, (loss, logits) = torch.func.grad_and_value(loss_fn, has_aux=True)(state.params)
    return state.apply_gradients(grads), {
        "loss": loss, "accuracy": ft.metrics.Accuracy.from_logits(logits, y)}


def eval_fn(state, batch):
    x, y = batch
    logits, _ = ft.call(state.module, state.params, state.buffers, x)
    return {"loss": ft.metrics.Mean.from_value(nn.functional.cross_entropy(logits, y),
                                               weight=len(y)),
            "accuracy": ft.metrics.Accuracy.from_logits(logits, y)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--members", type=int, default=16)
    parser.add_argument("--lr-min", type=float, default=1e-4)
    parser.add_argument("--lr-max", type=float, default=1e-1)
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--patience", type=int, default=3, help="evaluations without gain")
    parser.add_argument("--compile", default="auto")
    parser.add_argument("--run-dir", default=None)
    args = parser.parse_args()

    example = _mnist1d_example()
    train, test = example.load_mnist1d()
    n = args.members
    ratio = (args.lr_max / args.lr_min) ** (1 / max(n - 1, 1))
    lrs = [args.lr_min * ratio**i for i in range(n)]  # log-spaced
    tx = ft.optim.inject_hyperparams(ft.optim.adam)(learning_rate=1e-3)
    pop = ft.population.create(example.ConvNet, tx, seeds=list(range(n)),
                               hparams={"learning_rate": lrs})
    loader = ft.data.ArrayLoader(train, args.batch_size, shuffle=True, drop_last=True)
    test_loader = ft.data.ArrayLoader(test, 500)
    pop_eval = ft.population.vmap_eval(eval_fn)
    pop = ft.fit(ft.population.vmap(step), pop, loader, max_steps=args.steps,
                 eval_fn=pop_eval, eval_loader=test_loader,
                 eval_every=max(1, args.steps // 10),
                 callbacks=[ft.Logging(every=max(1, args.steps // 30)),
                            ft.population.EarlyStopping("val/loss", patience=args.patience)],
                 compile=args.compile, run_dir=args.run_dir)
    result = ft.evaluate(pop_eval, pop, test_loader, compile=args.compile)
    print(f"\n{'member':>6} {'learning rate':>14} {'test accuracy':>14} {'steps':>6}")
    steps = pop.members.step.tolist()
    for i, lr in enumerate(lrs):
        print(f"{i:>6} {lr:>14.2e} {result[f'accuracy/{i}']:>14.2%} {steps[i]:>6}")
    best = max(range(n), key=lambda i: result[f"accuracy/{i}"])
    print(f"best: member {best} (lr {lrs[best]:.2e}), {result[f'accuracy/{best}']:.2%}")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.semilogx(lrs, [result[f"accuracy/{i}"] for i in range(n)], "o-")
    ax.set_xlabel("Adam learning rate")
    ax.set_ylabel("test accuracy")
    ax.set_title(f"MNIST-1D CNN, {n} members in one population")
    path = os.path.join(args.run_dir or ".", "sweep.png")
    fig.tight_layout()
    fig.savefig(path)
    print(f"plot: {path}")


if __name__ == "__main__":
    main()
