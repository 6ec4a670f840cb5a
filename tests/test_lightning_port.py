"""examples/lightning_port.py runs end to end on IDX files and fails clearly without them."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FASHION = "/usr/share/datasets/fashion-mnist"


def _run(*args, timeout=600):
    env = {**os.environ, "PYTHONPATH": ROOT}
    return subprocess.run([sys.executable, "examples/lightning_port.py", *args], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=timeout)


def _write_idx(path, array):
    header = bytes([0, 0, 8, array.ndim]) + b"".join(
        int(n).to_bytes(4, "big") for n in array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def _synthetic_mnist(folder, n_train=1200, n_test=200, seed=0):
    """Learnable 28x28 images: class k lights up row block k, plus noise."""
    rng = np.random.default_rng(seed)
    for split, n in (("train", n_train), ("t10k", n_test)):
        labels = rng.integers(0, 10, n)
        images = rng.integers(0, 60, (n, 28, 28))
        for i, k in enumerate(labels):
            images[i, 2 * k + 4:2 * k + 6, 4:24] = 255
        _write_idx(folder / f"{split}-images-idx3-ubyte", images)
        _write_idx(folder / f"{split}-labels-idx1-ubyte", labels)


def test_the_port_trains_tests_and_predicts_on_idx_files(tmp_path):
    _synthetic_mnist(tmp_path)
    out = _run("--data", str(tmp_path), "--epochs", "3", "--val-size", "200", "--lr", "3e-3",
               "--compile", "eager", "--run-dir", str(tmp_path / "run"))
    assert out.returncode == 0, out.stderr[-3000:]
    accuracy = float(out.stdout.split("test accuracy:")[1].split("%")[0])
    assert accuracy > 80.0, out.stdout  # chance is 10%
    assert "predicted labels of the first 8 test images: [" in out.stdout
    assert (tmp_path / "run" / "metrics.csv").exists()


def test_fast_dev_run_takes_one_batch_and_writes_no_logs(tmp_path):
    _synthetic_mnist(tmp_path, n_train=300, n_test=50)
    out = _run("--data", str(tmp_path), "--val-size", "50", "--compile", "eager",
               "--fast-dev-run", "--run-dir", str(tmp_path / "run"))
    assert out.returncode == 0, out.stderr[-3000:]
    assert "test accuracy:" in out.stdout
    assert not (tmp_path / "run").exists()


@pytest.mark.skipif(not os.path.isdir(FASHION), reason="dataset-fashion-mnist not installed")
def test_the_port_runs_on_debian_fashion_mnist():
    out = _run("--fast-dev-run", "--compile", "eager")
    assert out.returncode == 0, out.stderr[-3000:]


def test_missing_data_lists_the_options(tmp_path):
    out = _run("--data", str(tmp_path))
    assert out.returncode != 0
    assert "--dataset fashion-mnist" in out.stderr and "--data DIR" in out.stderr
    assert "train-images-idx3-ubyte" in out.stderr
