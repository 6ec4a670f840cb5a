"""Data parallel on one host: ``fit(compile_step(..., devices="all"))`` over two XLA CPU devices
(SPMD, each batch split in two) gives what one device gives on the whole batch."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

import functrain as ft

torch.manual_seed(0)
MLP = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.ReLU(), torch.nn.Linear(64, 4))
X, Y = torch.randn(256, 32, generator=torch.Generator().manual_seed(2)), torch.arange(256) % 4


def step(state, batch):
    x, y = batch

    def loss_fn(params):
        out, _ = ft.call(MLP, params, state.buffers, x)
        return torch.nn.functional.cross_entropy(out, y)

    grads, loss = torch.func.grad_and_value(loss_fn)(state.params)
    return state.apply_gradients(grads), {"loss": loss}


def fresh_state():
    return ft.TrainState.create(MLP, ft.optim.adamw(1e-2))


def loader():
    return ft.data.ArrayLoader((X, Y), 64, shuffle=True, seed=4)


def on_cpu(tree):
    return ft.tree.map(lambda x: x.cpu() if isinstance(x, torch.Tensor) else x, tree)


class ListLogger:
    last = None

    def __init__(self):
        self.losses = []
        ListLogger.last = self

    def log_hparams(self, params):
        pass

    def log_metrics(self, metrics, step):
        if "train/loss" in metrics:
            self.losses.append((step, metrics["train/loss"]))

    def close(self):
        pass


def test_two_devices_equal_one_device_on_the_whole_batch(tmp_path):
    out = tmp_path / "spmd.pt"
    env = {**os.environ, "PJRT_DEVICE": "CPU", "CPU_NUM_DEVICES": "2"}
    proc = subprocess.run([sys.executable, os.path.join(os.path.dirname(__file__), "spmd_run.py"),
                           str(out)], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = torch.load(out, weights_only=False)
    assert got["devices"] == 2
    assert "devices=[2" in got["sharding"], got["sharding"]  # the batch really was split

    log = ListLogger()
    ref = ft.fit(step, fresh_state(), loader(), epochs=2, device="xla",
                 callbacks=[ft.Logging(every=4, loggers=[log], summary=False)])
    want = ft.tree.leaves_with_path(on_cpu(ref), "state")
    assert [p for p, _ in got["state"]] == [p for p, _ in want]
    for (path, a), (_, b) in zip(got["state"], want):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=lambda m, p=path: f"{p}: {m}")
    assert [s for s, _ in got["losses"]] == [s for s, _ in log.losses]
    assert [v for _, v in got["losses"]] == pytest.approx([v for _, v in log.losses], rel=1e-5)


def test_devices_must_span_every_device():
    with pytest.raises(ValueError, match="must span all of them"):
        ft.compile_step(step, device="xla", devices=3)
