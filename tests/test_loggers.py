"""Tests for functrain.loggers and the private progress bar / run summary."""

from __future__ import annotations

import csv
import io
import json
import math
import os

import pytest
import torch

from functrain import _progress
from functrain import loggers as L

# --- JSONL -------------------------------------------------------------------------------------


def test_jsonl_roundtrip_with_nonfinite(tmp_path):
    path = tmp_path / "run" / "metrics.jsonl"
    lg = L.JSONLLogger(path)
    lg.log_metrics({"loss": 0.5, "acc": 1}, step=0)
    lg.log_metrics({"loss": math.nan, "g": math.inf, "h": -math.inf}, step=10)
    # flushed on every write: readable before close
    rows = L.read_jsonl(path)
    lg.close()
    assert rows[0] == {"step": 0, "loss": 0.5, "acc": 1}
    assert rows[1]["step"] == 10 and math.isnan(rows[1]["loss"])
    assert rows[1]["g"] == math.inf and rows[1]["h"] == -math.inf
    # every line is strict JSON
    for line in path.read_text().splitlines():
        json.loads(line, parse_constant=lambda c: pytest.fail(f"non-strict JSON {c}"))


def test_jsonl_appends_on_reopen(tmp_path):
    path = tmp_path / "metrics.jsonl"
    for step in (1, 2):
        lg = L.JSONLLogger(path)
        lg.log_metrics({"loss": float(step)}, step=step)
        lg.close()
    assert [r["step"] for r in L.read_jsonl(path)] == [1, 2]


def test_jsonl_recovers_from_truncated_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "loss": 0.5}\n{"step": 2, "lo')  # crash mid-write
    lg = L.JSONLLogger(path)
    lg.log_metrics({"loss": 0.25}, step=2)
    lg.close()
    assert L.read_jsonl(path) == [{"step": 1, "loss": 0.5}, {"step": 2, "loss": 0.25}]


def test_hparams_file(tmp_path):
    lg = L.JSONLLogger(tmp_path / "metrics.jsonl")
    lg.log_hparams({"lr": 1e-3, "layers": [64, 64], "dtype": torch.float32})
    lg.close()
    hp = json.loads((tmp_path / "hparams.json").read_text())
    assert hp == {"lr": 1e-3, "layers": [64, 64], "dtype": "torch.float32"}


def test_values_are_validated_and_tensors_converted(tmp_path):
    lg = L.JSONLLogger(tmp_path / "m.jsonl")
    lg.log_metrics({"loss": torch.tensor(0.5), "ok": True}, step=torch.tensor(3))
    with pytest.raises(TypeError, match=r"metrics\['x'\]: expected a float or int"):
        lg.log_metrics({"x": torch.ones(2)}, step=4)
    with pytest.raises(TypeError, match="step: expected an int"):
        lg.log_metrics({"x": 1.0}, step=4.0)
    with pytest.raises(ValueError, match="reserved"):
        lg.log_metrics({"step": 1.0}, step=4)
    lg.close()
    assert L.read_jsonl(tmp_path / "m.jsonl") == [{"step": 3, "loss": 0.5, "ok": 1}]


# --- CSV ---------------------------------------------------------------------------------------


def test_csv_roundtrip_and_new_key_rewrite(tmp_path):
    path = tmp_path / "metrics.csv"
    lg = L.CSVLogger(path)
    lg.log_metrics({"loss": 0.5}, step=1)
    lg.log_metrics({"loss": 0.25}, step=2)
    assert path.read_text().splitlines() == ["step,loss", "1,0.5", "2,0.25"]  # flushed
    lg.log_metrics({"val_acc": 0.9, "loss": math.nan}, step=3)  # new key: header rewritten
    lg.log_metrics({"loss": math.inf}, step=4)
    lg.close()
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["step", "loss", "val_acc"]
    assert rows[1:] == [["1", "0.5", ""], ["2", "0.25", ""], ["3", "nan", "0.9"],
                        ["4", "inf", ""]]
    back = L.read_csv(path)
    assert back[0] == {"step": 1, "loss": 0.5}
    assert math.isnan(back[2]["loss"]) and back[2]["val_acc"] == 0.9
    assert back[3] == {"step": 4, "loss": math.inf}
    assert not os.path.exists(str(path) + ".tmp")


def test_csv_appends_on_reopen_and_keeps_header(tmp_path):
    path = tmp_path / "metrics.csv"
    lg = L.CSVLogger(path)
    lg.log_metrics({"a": 1.0, "b": 2.0}, step=1)
    lg.close()
    lg = L.CSVLogger(path)
    assert lg.columns == ["step", "a", "b"]
    lg.log_metrics({"b": 3.0}, step=2)
    lg.log_metrics({"c": 4.0}, step=3)
    lg.close()
    assert path.read_text().splitlines() == ["step,a,b,c", "1,1.0,2.0,", "2,,3.0,", "3,,,4.0"]


def test_csv_exact_float_roundtrip(tmp_path):
    path = tmp_path / "m.csv"
    lg = L.CSVLogger(path)
    x = 0.1 + 0.2
    lg.log_metrics({"x": x}, step=0)
    lg.close()
    assert L.read_csv(path)[0]["x"] == x


def test_csv_rejects_foreign_file(tmp_path):
    path = tmp_path / "m.csv"
    path.write_text("epoch,loss\n0,1.0\n")
    with pytest.raises(ValueError, match="first column is 'step'"):
        L.CSVLogger(path)


# --- default_loggers / protocol ----------------------------------------------------------------


def test_default_loggers_without_tensorboard(tmp_path):
    loggers = L.default_loggers(tmp_path / "run", tensorboard=False)
    assert [type(lg) for lg in loggers] == [L.JSONLLogger, L.CSVLogger]
    assert all(isinstance(lg, L.Logger) for lg in loggers)
    for lg in loggers:
        lg.log_hparams({"seed": 0})
        lg.log_metrics({"loss": 1.0}, step=0)
        lg.close()
    assert sorted(os.listdir(tmp_path / "run")) == ["hparams.json", "metrics.csv",
                                                    "metrics.jsonl"]
    with pytest.raises(ValueError, match="tensorboard: expected True, False or 'auto'"):
        L.default_loggers(tmp_path, tensorboard="yes")


def test_tensorboard_missing_gives_hint(tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name.startswith("torch.utils.tensorboard") or name.startswith("tensorboard"):
            raise ModuleNotFoundError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    monkeypatch.setattr(L, "_tensorboard_available", lambda: False)
    with pytest.raises(ImportError, match=r"HINT: pip install 'functrain\[tensorboard\]'"):
        L.TensorBoardLogger(tmp_path)
    with pytest.raises(ImportError, match="HINT"):
        L.default_loggers(tmp_path, tensorboard=True)
    assert len(L.default_loggers(tmp_path / "auto", tensorboard="auto")) == 2


def test_tensorboard_event_file(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    loggers = L.default_loggers(tmp_path, tensorboard="auto")
    assert isinstance(loggers[-1], L.TensorBoardLogger)
    tb = loggers[-1]
    tb.log_hparams({"lr": 0.1, "layers": [2, 3]})
    tb.log_metrics({"train/loss": 0.5}, step=1)
    tb.log_metrics({"train/loss": math.nan}, step=2)
    for lg in loggers:
        lg.close()
    log_dir = tmp_path / "tensorboard"
    assert any(name.startswith("events.out.tfevents") for name in os.listdir(log_dir))
    ea = EventAccumulator(str(log_dir))
    ea.Reload()
    scalars = ea.Scalars("train/loss")
    assert [s.step for s in scalars] == [1, 2]
    assert scalars[0].value == 0.5 and math.isnan(scalars[1].value)


# --- progress bar and summary ------------------------------------------------------------------


def test_disabled_progress_bar_prints_nothing():
    out = io.StringIO()
    bar = _progress.ProgressBar(total=10, enabled=False, file=out)
    for _ in range(10):
        bar.update(1, {"loss": 0.5}, samples=32, epoch=0)
    bar.write("eval: acc=0.9")
    bar.close()
    assert out.getvalue() == "" and bar.n == 10
    # enabled=None follows isatty(); a StringIO is not a terminal
    assert _progress.ProgressBar(total=None, file=io.StringIO()).enabled is False


def test_fallback_progress_bar_lines():
    out = io.StringIO()  # not a TTY: the plain-line fallback, even with tqdm installed
    bar = _progress.ProgressBar(total=100, enabled=True, file=out, min_interval=3600)
    bar.update(1, {"loss": 2.0}, samples=10, epoch=0)  # first update prints
    bar.update(49, {"loss": 1.0, "acc": 0.5}, samples=490, epoch=1)  # throttled
    assert out.getvalue().count("\n") == 1
    bar.write("checkpoint saved")
    bar.close()  # prints the final state
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("train 1/100") and "loss=2.0000" in lines[0]
    assert lines[1] == "checkpoint saved"
    assert "50/100" in lines[2] and "epoch=1" in lines[2] and "acc=0.5000" in lines[2]
    assert "samples/s" in lines[2] and "ETA" in lines[2]
    with pytest.raises(TypeError, match="expected a float, got a tensor"):
        bar.update(1, {"loss": torch.tensor(1.0)})


def test_format_summary_contains_figures():
    text = _progress.format_summary({
        "steps": 1234, "epochs": 3, "wall_time": 3725.0, "samples_per_s": 9876.54,
        "last": {"loss": 0.1234, "acc": 0.9}, "best": {"loss": 0.1, "val_acc": 0.95},
        "compile_time": 12.5,
    })
    assert "1234" in text and "1:02:05" in text and "9,876.5" in text
    assert "compile_time" in text and "12.5000" in text
    loss = next(line for line in text.splitlines() if line.strip().startswith("loss"))
    assert loss.split() == ["loss", "0.1234", "0.1000"]
    val = next(line for line in text.splitlines() if line.strip().startswith("val_acc"))
    assert val.split() == ["val_acc", "-", "0.9500"]
    assert _progress.format_summary({}) == "Run summary"
