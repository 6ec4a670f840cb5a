"""fit on N ranks: worker functions for tests/distributed/test_fit_on_ranks.py (run with launch)."""

from __future__ import annotations

import json
import os

import torch
from torch import nn

import functrain as ft
from functrain import distributed as fd

GLOBAL_BATCH = 16
CALLBACKS: list = []  # extra callbacks for fit_run (set by scripts)


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


SYNC_METHODS = ("item", "tolist", "cpu", "numpy", "__bool__", "__float__", "__int__")


def _count_syncs(fn):
    """Run fn() counting the tensor methods that copy device data to the host."""
    counts = dict.fromkeys(SYNC_METHODS, 0)
    originals = {name: getattr(torch.Tensor, name) for name in SYNC_METHODS}

    def wrap(name, f):
        def counted(self, *args, **kwargs):
            counts[name] += 1
            return f(self, *args, **kwargs)

        return counted

    try:
        for name, f in originals.items():
            setattr(torch.Tensor, name, wrap(name, f))
        out = fn()
    finally:
        for name, f in originals.items():
            setattr(torch.Tensor, name, f)
    return out, sum(counts.values())


def fit_run(run_dir, world, *, compile="inductor", max_steps=None, epochs=2, resume=None,
            checkpoint_every=None, dropout=True, evaluate=True, count_syncs=False):
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
    tx = state.tx

    def run():
        return ft.fit(step, state, train, epochs=epochs, max_steps=max_steps,
                      eval_fn=eval_fn if evaluate else None,
                      eval_loader=held if evaluate else None, compile=compile,
                      run_dir=run_dir, resume=resume,
                      callbacks=[*([ft.Checkpointing(every=checkpoint_every)]
                                   if checkpoint_every else []),
                                 ft.Logging(every=5, progress=False,
                                            loggers=None if run_dir else []), *CALLBACKS])

    state, syncs = _count_syncs(run) if count_syncs else (run(), None)
    return {"syncs": syncs, "tx_is_original": state.tx is tx, "rank": fd.rank(),
            "world": fd.world_size(), "step": int(state.step),
            "params": {k: v.clone() for k, v in state.params.items()},
            "opt_state": [t.clone() for t in ft.tree.leaves(state.opt_state)],
            "rng": state.rng.clone(),
            "metrics": _read_jsonl(os.path.join(run_dir, "metrics.jsonl")) if run_dir else []}


def fit_twice(run_dir, world, first_steps, total_steps, **kw):
    """Stop at first_steps (checkpointing), then resume='auto' to total_steps."""
    fit_run(run_dir, world, max_steps=first_steps, checkpoint_every=first_steps, epochs=None,
            **kw)
    return fit_run(run_dir, world, max_steps=total_steps, resume="auto", epochs=None,
                   checkpoint_every=first_steps, **kw)


def fit_iterable():
    """fit over a DataLoader of an IterableDataset on 2 ranks: refused."""

    class Stream(torch.utils.data.IterableDataset):
        def __iter__(self):
            x, y = _data(32, seed=1)
            yield from zip(x, y)

    model = _model(False)
    step, _ = _step(model)
    state = ft.TrainState.create(model, ft.optim.adamw(1e-2))
    ft.fit(step, state, torch.utils.data.DataLoader(Stream(), batch_size=8), epochs=1,
           callbacks=[ft.Logging.quiet()], compile="eager")


def sync_counts():
    """Host transfers of compiled fit calls of 10 and 30 steps (after a warm-up call)."""
    torch.set_num_threads(1)
    x, y = _data(160, seed=5)
    torch.manual_seed(0)
    model = _model(False)
    step, _ = _step(model)
    state = ft.TrainState.create(model, ft.optim.adamw(1e-2), seed=3)
    world = fd.environment().world_size
    train = ft.data.ArrayLoader((x, y), GLOBAL_BATCH // world, shuffle=True, seed=1)
    counts = []
    for steps in (5, 10, 30):
        state, n = _count_syncs(lambda s=steps, st=state: ft.fit(
            step, st, train, max_steps=s, callbacks=[ft.Logging.quiet(every=5)],
            compile="inductor"))
        counts.append(n)
    return counts


INF_STEP = 2  # the step (from 0) at which rank 1's share of the batch holds an inf


def _fp16_step(model):
    from functrain import precision as mp

    def loss_fn(params, state, x, y):
        logits, _ = ft.call(model, params, state.buffers, x)
        return nn.functional.cross_entropy(logits.float(), y)

    def step(state, batch):
        x, y = batch
        loss, grads = mp.value_and_grad(loss_fn)(state.params, state, x, y,
                                                 loss_scale=mp.get_loss_scale(state))
        return mp.apply_gradients(state, grads), {"loss": loss}

    return step


def _bn_dropout_step(model):
    def step(state, batch):
        x, y = batch
        key = ft.random.fold_in(state.rng, state.step)

        def loss_fn(params):
            out, buffers = ft.call(model, params, state.buffers, x, rng=key, train=True)
            return nn.functional.cross_entropy(out, y), buffers

        grads, (loss, buffers) = torch.func.grad_and_value(loss_fn, has_aux=True)(state.params)
        return state.apply_gradients(grads, buffers=buffers), {"loss": loss}

    return step


def _snapshot(state):
    out = {"params": {k: v.clone() for k, v in state.params.items()},
           "buffers": {k: v.clone() for k, v in state.buffers.items()},
           "opt_state": [t.clone() for t in ft.tree.leaves(state.opt_state)],
           "step": int(state.step)}
    ls = state.extras.get("loss_scale")
    if ls is not None:
        out["loss_scale"] = (float(ls.loss_scale), int(ls.skipped_steps))
    return out


def fp16_and_runner_runs(steps=8):
    """fit on the ranks (1) with precision="16-mixed" where rank 1's share of the batch at
    INF_STEP holds an inf, and (2) with BatchNorm and keyed dropout, once with the plain step
    and once with the same step passed as an `ft.compile_step` runner. Rank 0 also runs the
    one-process fp16 reference (global batch, eager, no fit)."""
    torch.set_num_threads(1)
    world = fd.world_size() if fd.environment() is None else fd.environment().world_size
    x, y = _data(GLOBAL_BATCH * steps, seed=5)
    x[INF_STEP * GLOBAL_BATCH + 1, 0] = float("inf")  # rank 1's (odd positions) at INF_STEP
    out = {}

    def fp16_state(model):
        return ft.TrainState.create(model, ft.optim.adamw(1e-2), seed=3)

    torch.manual_seed(0)
    model = _model(False)
    loader = ft.data.ArrayLoader((x, y), GLOBAL_BATCH // world, shuffle=False)
    state = ft.fit(_fp16_step(model), fp16_state(model), loader, max_steps=steps,
                   precision="16-mixed", compile="inductor",
                   callbacks=[ft.Logging.quiet()])
    out["fp16"] = _snapshot(state)
    if fd.rank() == 0:
        run = ft.compile_step(_fp16_step(model), precision="16-mixed", compile="eager",
                              device="cpu")
        ref = fp16_state(model)
        for batch in ft.data.ArrayLoader((x, y), GLOBAL_BATCH, shuffle=False):
            ref, _ = run(ref, batch)
        out["fp16_reference"] = _snapshot(ref)

    x[INF_STEP * GLOBAL_BATCH + 1, 0] = 0.0
    torch.manual_seed(0)
    bn = nn.Sequential(nn.Linear(10, 32, bias=False), nn.BatchNorm1d(32), nn.ReLU(),
                       nn.Dropout(0.5), nn.Linear(32, 4))
    step = _bn_dropout_step(bn)
    for name, fn in (("plain", step), ("runner", ft.compile_step(step, compile="eager",
                                                                  device="cpu"))):
        state = ft.TrainState.create(bn, ft.optim.adamw(1e-2), seed=3)
        state = ft.fit(fn, state, loader, max_steps=steps, callbacks=[ft.Logging.quiet()],
                       **({"compile": "eager"} if name == "plain" else {}))
        out[name] = _snapshot(state)
    return out
