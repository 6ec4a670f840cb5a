"""MLflow (local file store) and W&B (offline) logger adapters, with the real packages.

Nothing here contacts a server: MLflow writes to a file store under tmp with telemetry off, and
W&B runs in offline mode under tmp with error reporting off; both are read back from disk.
"""

from __future__ import annotations

import json
import math
import struct

import pytest
import torch

import functrain as ft
from functrain.loggers import MLflowLogger, WandbLogger


def _fit(loggers, steps=6, log_every=2):
    model = torch.nn.Linear(2, 1)
    x = torch.randn(24, 2)

    def step(state, batch):
        def loss_fn(params):
            out, _ = ft.call(model, params, state.buffers, batch)
            return (out ** 2).mean()

        grads, loss = torch.func.grad_and_value(loss_fn)(state.params)
        return state.apply_gradients(grads), {"loss": loss}

    def eval_fn(state, batch):
        out, _ = ft.call(model, state.params, state.buffers, batch)
        return {"mse": (out ** 2).mean()}

    state = ft.TrainState.create(model, ft.optim.sgd(0.1))
    return ft.fit(step, state, ft.data.ArrayLoader(x, 4), max_steps=steps,
                  eval_fn=eval_fn, eval_loader=ft.data.ArrayLoader(x, 12), eval_every=3,
                  compile="eager", callbacks=[ft.Logging(every=log_every, loggers=loggers,
                                                  hparams={"lr": 0.1, "layers": [2, 1]},
                                                  progress=False, summary=False)])


# -- MLflow ------------------------------------------------------------------------------------

@pytest.fixture
def mlflow_store(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    monkeypatch.setenv("DO_NOT_TRACK", "true")
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    pytest.importorskip("mlflow")
    return "file:" + str(tmp_path / "mlruns")


def test_mlflow_gets_what_the_jsonl_logger_gets(tmp_path, mlflow_store):
    jsonl = ft.loggers.JSONLLogger(tmp_path / "m.jsonl")
    lg = MLflowLogger("exp", run_name="r1", tracking_uri=mlflow_store, tags={"kind": "test"})
    _fit([jsonl, lg])
    rows = ft.loggers.read_jsonl(tmp_path / "m.jsonl")
    run = lg.client.get_run(lg.run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "r1"
    assert run.data.tags["kind"] == "test"
    assert run.data.params["lr"] == "0.1" and run.data.params["layers"] == "[2, 1]"
    assert run.data.params["max_steps"] == "6"  # fit's own settings come along
    for name in ("train/loss", "val/mse"):
        want = [(r["step"], r[name]) for r in rows if name in r]
        got = [(m.step, m.value) for m in lg.client.get_metric_history(lg.run_id, name)]
        assert sorted(got) == want and len(want) >= 2, name


def test_mlflow_resume_continues_the_run_and_keeps_its_params(mlflow_store):
    lg = MLflowLogger("exp", tracking_uri=mlflow_store)
    lg.log_hparams({"lr": 0.1, "start_step": 0})
    lg.log_metrics({"loss": 1.0, "bad": math.nan}, step=1)
    lg.close()
    lg.close()  # twice is fine
    again = MLflowLogger("exp", tracking_uri=mlflow_store, run_id=lg.run_id)
    again.log_hparams({"lr": 0.1, "start_step": 5, "new": "x"})  # no error on a changed param
    again.log_metrics({"loss": 0.5}, step=6)
    again.close()
    run = again.client.get_run(lg.run_id)
    assert run.data.params == {"lr": "0.1", "start_step": "0", "new": "x"}
    history = again.client.get_metric_history(lg.run_id, "loss")
    assert [(m.step, m.value) for m in history] == [(1, 1.0), (6, 0.5)]
    assert math.isnan(again.client.get_metric_history(lg.run_id, "bad")[0].value)
    with pytest.raises(TypeError, match=r"metrics\['x'\]: expected a float or int, got 'a'"):
        again.log_metrics({"x": "a"}, step=7)


def test_mlflow_explains_a_store_it_cannot_open(tmp_path, mlflow_store, monkeypatch):
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE")
    with pytest.raises(RuntimeError, match=r"expected to open the tracking store 'file:.*HINT: a "
                                           r"local store is tracking_uri='sqlite:///mlflow.db'"):
        MLflowLogger("exp", tracking_uri="file:" + str(tmp_path / "other"))


# -- Weights & Biases -------------------------------------------------------------------------

@pytest.fixture
def wandb_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_ERROR_REPORTING", "false")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    pytest.importorskip("wandb")
    return tmp_path / "wb"


def _wandb_records(run_dir):
    """Decode an offline run's .wandb file: W&B's record log (LevelDB-style 32 KiB blocks)."""
    from wandb.proto import wandb_internal_pb2 as pb

    (path,) = run_dir.glob("wandb/offline-run-*/run-*.wandb")
    data = path.read_bytes()
    assert data[:4] == b":W&B"
    pos, buf, records = 7, b"", []
    while pos + 7 <= len(data):
        if 32768 - pos % 32768 < 7:
            pos += 32768 - pos % 32768  # block trailer
            continue
        _, n, kind = struct.unpack("<IHB", data[pos:pos + 7])
        pos += 7
        if n == 0 and kind == 0:
            break
        buf, pos = buf + data[pos:pos + n], pos + n
        if kind in (1, 4):  # a full record, or the last piece of one
            record = pb.Record()
            record.ParseFromString(buf)
            records.append(record)
            buf = b""
    return records


def test_wandb_offline_gets_what_the_jsonl_logger_gets(tmp_path, wandb_dir):
    jsonl = ft.loggers.JSONLLogger(tmp_path / "m.jsonl")
    lg = WandbLogger("functrain-test", name="r1", dir=wandb_dir, mode="offline")
    _fit([jsonl, lg])
    rows = ft.loggers.read_jsonl(tmp_path / "m.jsonl")
    history: dict[int, dict[str, float]] = {}
    config = {}
    for r in _wandb_records(wandb_dir):
        kind = r.WhichOneof("record_type")
        if kind == "history":
            items = {"/".join(i.nested_key) or i.key: json.loads(i.value_json)
                     for i in r.history.item}
            history.setdefault(items["_step"], {}).update(
                {k: v for k, v in items.items() if not k.startswith("_")})
        elif kind == "config":
            config.update({u.key: json.loads(u.value_json) for u in r.config.update})
    want: dict[int, dict[str, float]] = {}
    for row in rows:
        want.setdefault(row["step"], {}).update({k: v for k, v in row.items() if k != "step"})
    assert history == want and len(want) >= 3  # floats round-trip exactly through JSON
    assert config["lr"] == 0.1 and config["layers"] == [2, 1] and config["max_steps"] == 6
    lg.close()  # fit closed it already: twice is fine


def test_wandb_bad_arguments_are_named(wandb_dir):
    with pytest.raises(ValueError, match="mode: expected one of 'online', 'offline', 'disabled'"):
        WandbLogger("p", dir=wandb_dir, mode="off")
    lg = WandbLogger("p", dir=wandb_dir, mode="offline")
    with pytest.raises(TypeError, match=r"metrics\['x'\]: expected a float or int"):
        lg.log_metrics({"x": [1.0]}, step=1)
    lg.log_metrics({"x": torch.tensor(2.0)}, step=1)  # a 0-d tensor by hand is converted
    lg.close()
