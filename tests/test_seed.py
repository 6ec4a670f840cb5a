"""seed_everything: one call seeds Python, NumPy and PyTorch, so model init repeats."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from torch import nn

import functrain as ft
from functrain import seed_everything


def _draws():
    return (random.random(), float(np.random.rand()), torch.rand(3).tolist(),
            nn.Linear(4, 3).weight.detach().clone())


def test_every_global_generator_repeats_after_the_same_seed():
    assert seed_everything(123) == 123
    a = _draws()
    seed_everything(123)
    b = _draws()
    assert a[:3] == b[:3] and torch.equal(a[3], b[3])
    seed_everything(124)
    c = _draws()
    assert a[0] != c[0] and a[1] != c[1] and a[2] != c[2] and not torch.equal(a[3], c[3])


def test_a_whole_run_with_dropout_and_a_shuffling_dataloader_is_a_function_of_the_seed():
    def run(seed):
        seed_everything(seed)
        model = nn.Sequential(nn.Linear(5, 16), nn.Dropout(0.5), nn.Linear(16, 1))
        data = torch.utils.data.TensorDataset(torch.randn(64, 5), torch.randn(64, 1))
        loader = torch.utils.data.DataLoader(data, batch_size=8, shuffle=True)

        def step(state, batch):
            key = ft.random.fold_in(state.rng, state.step)

            def loss_fn(params):
                out, _ = ft.call(model, params, state.buffers, batch[0], rng=key)
                return ((out - batch[1]) ** 2).mean()

            grads, loss = torch.func.grad_and_value(loss_fn)(state.params)
            return state.apply_gradients(grads), {"loss": loss}

        state = ft.TrainState.create(model, ft.optim.sgd(0.05), seed=seed)
        return ft.fit(step, state, loader, epochs=2, compile="eager",
                      callbacks=[ft.Logging.quiet()]).params

    a, b, c = run(7), run(7), run(8)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["0.weight"], c["0.weight"])


@pytest.mark.parametrize("bad, error, match", [
    (-1, ValueError, r"seed: expected an int >= 0, got -1"),
    (2**32, ValueError, r"seed: expected an int in \[0, 4294967295\], got 4294967296. HINT"),
    (1.0, TypeError, r"seed: expected an int >= 0, got 1.0"),
    ("0", TypeError, r"seed: expected an int >= 0, got '0'"),
])
def test_bad_seeds_name_the_argument(bad, error, match):
    with pytest.raises(error, match=match):
        seed_everything(bad)
