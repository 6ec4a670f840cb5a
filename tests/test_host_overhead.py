"""The host's share of a compiled `fit` step, counted deterministically.

Timings on shared machines are noise; the Python function calls the loop and the runner make
per step are not. `sys.setprofile` counts them between two batches of a warm run: a new helper
call in the hot path shows here before any timing does.
"""

from __future__ import annotations

import collections
import os
import sys

import torch
import torch.nn.functional as F
from torch import nn

import functrain as ft

PACKAGE = os.path.dirname(os.path.abspath(ft.__file__))

# functrain's own frames per compiled step of fit: runner.run, runner._run, check_not_donated,
# place_batch, the compiled step's entry (functrain_step_N), poison, batch_size, should_stop and
# the loop's batch generator; with the step cache (on in this test), the cached step's check of
# the values it read from the user's module (DroppedGuards.changed_values; Dynamo's own path
# checks those in its guards). Raise it only with a reason.
MAX_FUNCTRAIN_CALLS_PER_STEP = 10


def _count_calls_per_step(first: int, last: int) -> tuple[float, collections.Counter]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 4))
    state = ft.TrainState.create(model, ft.optim.adam(1e-3))

    def step(state, batch):
        x, y = batch

        def loss_fn(p):
            logits, _ = ft.call(model, p, {}, x)
            return F.cross_entropy(logits, y)

        g, loss = torch.func.grad_and_value(loss_fn)(state.params)
        return state.apply_gradients(g), {"loss": loss}

    batches = [(torch.randn(8, 16), torch.randint(0, 4, (8,))) for _ in range(4)]
    names: collections.Counter = collections.Counter()

    def prof(frame, event, arg):
        if event == "call" and frame.f_code.co_filename.startswith(PACKAGE):
            names[frame.f_code.co_name] += 1

    def loader():
        for i in range(last + 20):
            if i == first:
                sys.setprofile(prof)
            if i == last:
                sys.setprofile(None)
            yield batches[i % len(batches)]

    try:
        ft.fit(step, state, loader(), max_steps=last + 10, compile="inductor",
               callbacks=[ft.Logging.quiet(every=1000)])
    finally:
        sys.setprofile(None)
    return sum(names.values()) / (last - first), names


def test_a_compiled_fit_step_makes_few_python_calls_in_functrain():
    # Counted over 100 warm steps without a log window's read (every=1000) or a compile.
    per_step, names = _count_calls_per_step(100, 200)
    assert per_step <= MAX_FUNCTRAIN_CALLS_PER_STEP, (
        f"{per_step:.2f} functrain calls per compiled step (at most "
        f"{MAX_FUNCTRAIN_CALLS_PER_STEP} expected); the most frequent: "
        f"{names.most_common(15)}")
