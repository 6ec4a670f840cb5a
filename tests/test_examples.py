"""The examples run end to end (short versions) and fail clearly without data."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FASHION = "/usr/share/datasets/fashion-mnist"


def _run(*args, timeout=600):
    env = {**os.environ, "PYTHONPATH": ROOT}
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)


def test_mnist1d_example_short_run(tmp_path):
    out = _run("examples/mnist1d.py", "--steps", "200", "--compile", "eager",
               "--run-dir", str(tmp_path))
    assert out.returncode == 0, out.stderr[-2000:]
    assert "test accuracy:" in out.stdout
    accuracy = float(out.stdout.split("test accuracy:")[1].split("%")[0])
    assert accuracy > 40.0  # 200 steps are far from the ~93% of a full run, far above chance
    assert (tmp_path / "metrics.jsonl").exists()


@pytest.mark.skipif(not os.path.isdir(FASHION), reason="dataset-fashion-mnist not installed")
def test_mnist_example_on_fashion_mnist(tmp_path):
    out = _run("examples/mnist.py", "--dataset", "fashion-mnist", "--max-steps", "30",
               "--compile", "eager", "--run-dir", str(tmp_path))
    assert out.returncode == 0, out.stderr[-2000:]
    assert "test accuracy:" in out.stdout


def test_mnist_example_lists_options_when_data_is_missing(tmp_path):
    out = _run("examples/mnist.py", "--data", str(tmp_path))
    assert out.returncode != 0
    assert "--dataset fashion-mnist" in out.stderr and "--data DIR" in out.stderr
    assert "train-images-idx3-ubyte" in out.stderr


def test_bf16_mixed_and_fp32_both_train_mnist1d_into_the_known_band(tmp_path):
    """The MNIST-1D CNN, 2000 steps compiled, in fp32 and bf16-mixed: each lands in the task's band.

    A single seed's accuracy moves by ~1 point (SD) from seed to seed and by ~2 points between
    CPU types (kernel rounding differs), so the two precisions are not compared with each other
    on one seed. Each is held to the band this CNN reaches at 2000 steps (fp32 measured 91.0%
    and 93.4%, bf16-mixed 93.1% and 92.9%, on two CPU types), with ~5 points of room below the
    mean for rounding and seed. A precision that breaks training lands far below it.
    """
    accuracy = {}
    for precision in ("32", "bf16-mixed"):
        out = _run("examples/mnist1d.py", "--steps", "2000", "--precision", precision,
                   "--run-dir", str(tmp_path / precision))
        assert out.returncode == 0, out.stderr[-2000:]
        accuracy[precision] = float(out.stdout.split("test accuracy:")[1].split("%")[0])
    assert min(accuracy.values()) >= 88.0, accuracy
