"""fit on N ranks: worker functions for tests/distributed/test_fit.py (run with launch)."""

from __future__ import annotations

import json
import os

import torch
from torch import nn

import functrain as ft
from functrain import distributed as fd

GLOBAL_BATCH = 16


def _data(n, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 10, generator=g)
    return x, (x @ torch.randn(10, 4, generator=g)).argmax(1)


def _model(dropout=True):
    return nn.Sequential(nn.Linear(10, 32), nn.ReLU(),
                         nn.Dropout(0.2) if dropout else nn.Identity(), nn.Linear(32, 4))


def _step(model):
    def loss_and_logits(state, params, x, y, key=None):
        logits, _ = ft.call(model, params, state.buffers, x, rng=key, train=key is not None)
        return nn.functional.cross_entropy(logits, y), logits

    def step(state, batch):
        key = ft.random.fold_in(state.rng, state.step)
        grad_fn = torch.func.grad_and_value(loss_and_logits, argnums=1, has_aux=True)
        grads, (loss, logits) = grad_fn(state, state.params, *batch, key)
        return state.apply_gradients(grads), {
            "loss": loss, "accuracy": ft.metrics.Accuracy.from_logits(logits, batch[1])}

    def eval_fn(state, batch):
        loss, logits = loss_and_logits(state, state.params, *batch)
        return {"loss": ft.metrics.Mean.from_value(loss, weight=len(batch[1])),
                "accuracy": ft.metrics.Accuracy.from_logits(logits, batch[1])}

    return step, eval_fn


def _read_jsonl(path):
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def fit_run(run_dir, world, *, compile="inductor", max_steps=None, epochs=2, resume=None,
            checkpoint_every=None, dropout=True):
    """One fit run; the per-rank batch is GLOBAL_BATCH / world."""
    torch.set_num_threads(1)
    x, y = _data(160 + 13, seed=5)  # 160 training examples, 13 held out (an uneven split)
    env = fd.environment()
    # Each rank initialises its own weights (fit starts every rank from rank 0's state).
    torch.manual_seed(0 if env is None else env.rank)
    model = _model(dropout)
    step, eval_fn = _step(model)
    state = ft.TrainState.create(model, ft.optim.adamw(1e-2), seed=3)
    train = ft.data.ArrayLoader((x[:160], y[:160]), GLOBAL_BATCH // world, shuffle=True, seed=1)
    held = ft.data.ArrayLoader((x[160:], y[160:]), 4)
    state = ft.fit(step, state, train, epochs=epochs, max_steps=max_steps, eval_fn=eval_fn,
                   eval_loader=held, log_every=5, compile=compile, run_dir=run_dir,
                   progress=False, summary=fd.rank() == 0, resume=resume,
                   checkpoint_every=checkpoint_every)
    return {"rank": fd.rank(), "world": fd.world_size(), "step": int(state.step),
            "params": {k: v.clone() for k, v in state.params.items()},
            "opt_state": [t.clone() for t in ft.tree.leaves(state.opt_state)],
            "rng": state.rng.clone(), "tx_is_original": state.tx is not None,
            "metrics": _read_jsonl(os.path.join(run_dir, "metrics.jsonl")),
            "files": sorted(os.listdir(run_dir)) if os.path.isdir(run_dir) else []}


def fit_twice(run_dir, world, first_steps, total_steps, **kw):
    """Stop at first_steps (checkpointing), then resume='auto' to total_steps."""
    fit_run(run_dir, world, max_steps=first_steps, checkpoint_every=first_steps, epochs=None,
            **kw)
    return fit_run(run_dir, world, max_steps=total_steps, resume="auto", epochs=None,
                   checkpoint_every=first_steps, **kw)
