"""functrain.callbacks: metric sequences replayed through the callbacks, resume, fit, syncs."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import sys
import types

import pytest
import torch
from conftest import count_host_syncs
from torch import nn

import functrain as ft
from functrain import Loop
from functrain.callbacks import (
    EarlyStopping,
    LearningRateMonitor,
    ModelCheckpoint,
    ThroughputMonitor,
    lr_metrics,
    norm_metrics,
)

NAN, INF = math.nan, math.inf


def replay(cb, values, key="val/loss", hook="on_eval", loop=None, start=1):
    """Feed ``values`` to ``cb`` one check per step; return (1-based index of the stop, loop)."""
    loop = loop or Loop(state=None, step=0, epoch=0)
    for i, v in enumerate(values, start=start):
        loop.step = i
        getattr(cb, hook)(loop, {key: v, "val/other": 0.0, "train/other": 0.0})
        if loop.stop_reason:
            return i, loop
    return None, loop


# --- EarlyStopping -----------------------------------------------------------------------------


@pytest.mark.parametrize("patience, values, stop", [
    (3, [1.0, 0.9, 0.95, 0.92, 0.91], 5),
    (3, [1.0, 2.0, 2.0, 0.5, 2.0, 2.0, 2.0], 7),  # an improvement resets the count
    (3, [1.0, 0.9, 0.8, 0.7], None),
    (1, [1.0, 1.0], 2),  # a tie is not an improvement
    (0, [1.0, 2.0], 2),  # patience 0: the first non-improvement stops
])
def test_early_stopping_patience(patience, values, stop):
    es = EarlyStopping("val/loss", patience=patience)
    at, loop = replay(es, values)
    assert at == stop
    if stop is not None:
        assert es.stopped_step == stop and es.reason == loop.stop_reason
        assert "did not improve" in loop.stop_reason


@pytest.mark.parametrize("mode, min_delta, values, waits, best", [
    # min: improvement iff current + min_delta < best (strict); exactly min_delta is not enough
    ("min", 0.25, [1.0, 0.75, 0.71875, 0.5], [0, 1, 0, 1], 0.71875),
    # Lightning keeps min_delta's sign: a negative one lets a slightly worse value count
    ("min", -0.25, [1.0, 1.125, 1.5], [0, 0, 1], 1.125),
    # max: improvement iff current - min_delta > best
    ("max", 0.25, [1.0, 1.25, 1.5, 1.5], [0, 1, 0, 1], 1.5),
])
def test_early_stopping_min_delta_boundary(mode, min_delta, values, waits, best):
    es = EarlyStopping("val/loss", mode=mode, patience=10, min_delta=min_delta)
    seen = []
    for v in values:
        replay(es, [v])
        seen.append(es.wait_count)
    assert seen == waits and es.best_score == best


@pytest.mark.parametrize("mode, thr, values, stop", [
    ("min", 0.5, [1.0, 0.75, 0.5, 0.25], 4),  # reaching the threshold exactly is not enough
    ("max", 0.9, [0.5, 0.9, 0.95], 3),
])
def test_early_stopping_stopping_threshold(mode, thr, values, stop):
    es = EarlyStopping("val/loss", mode=mode, patience=10, stopping_threshold=thr)
    at, loop = replay(es, values)
    assert at == stop and "stopping threshold reached" in loop.stop_reason


@pytest.mark.parametrize("mode, thr, values, stop", [
    ("min", 2.0, [1.0, 2.0, 2.5], 3),
    ("max", 0.1, [0.5, 0.1, 0.05], 3),
])
def test_early_stopping_divergence_threshold(mode, thr, values, stop):
    es = EarlyStopping("val/loss", mode=mode, patience=10, divergence_threshold=thr)
    at, loop = replay(es, values)
    assert at == stop and "divergence threshold reached" in loop.stop_reason
    assert es.best_score == values[0]


@pytest.mark.parametrize("bad", [NAN, INF, -INF])
def test_early_stopping_check_finite_stops_on_nan_and_inf(bad):
    es = EarlyStopping("val/loss", patience=10)
    at, loop = replay(es, [1.0, 0.5, bad, 0.1])
    assert at == 3 and "is not finite" in loop.stop_reason and es.best_score == 0.5


def test_early_stopping_without_check_finite():
    es = EarlyStopping("val/loss", patience=3, check_finite=False)
    at, _ = replay(es, [1.0, NAN, NAN, NAN])  # NaN is never an improvement
    assert at == 4 and es.best_score == 1.0
    es = EarlyStopping("val/loss", patience=3, check_finite=False)
    assert replay(es, [1.0, INF, 0.5])[0] is None and es.best_score == 0.5
    es = EarlyStopping("val/loss", patience=3, check_finite=False, divergence_threshold=10.0)
    assert replay(es, [1.0, INF])[0] == 2  # +inf in min mode diverges
    es = EarlyStopping("val/loss", patience=3, check_finite=False)
    assert replay(es, [1.0, -INF])[0] is None and es.best_score == -INF


def test_early_stopping_mode_max():
    es = EarlyStopping("val/acc", mode="max", patience=3)
    at, loop = replay(es, [0.5, 0.6, 0.6, 0.55, 0.59], key="val/acc")
    assert at == 5 and es.best_score == 0.6 and es.best_step == 2
    assert "best 0.6 at step 2" in loop.stop_reason


def test_early_stopping_checks_when_the_metric_is_produced():
    es = EarlyStopping("train/loss", patience=1)
    replay(es, [1.0, 2.0, 3.0], key="val/loss", hook="on_eval")  # not its hook: ignored
    assert es.wait_count == 0 and es.best_step is None
    assert replay(es, [1.0, 2.0], key="train/loss", hook="on_log")[0] == 2
    es = EarlyStopping("val/loss", patience=1)
    replay(es, [1.0, 2.0, 3.0], key="train/loss", hook="on_log")
    assert es.best_step is None


def test_early_stopping_missing_monitor_lists_the_available_names():
    es = EarlyStopping("val/los")
    with pytest.raises(ValueError, match=r"'val/los'.*\['train/other', 'val/loss', 'val/other'\]"):
        replay(es, [1.0])


@pytest.mark.parametrize("kwargs, match", [
    (dict(monitor="loss"), "starting with 'val/' or 'train/'"),
    (dict(monitor="val/loss", mode="minimum"), "'min' or 'max'"),
    (dict(monitor="val/loss", patience=-1), "patience"),
    (dict(monitor="val/loss", patience=1.5), "patience"),
    (dict(monitor="val/loss", min_delta=None), "min_delta"),
    (dict(monitor="val/loss", stopping_threshold="0.1"), "stopping_threshold"),
    (dict(monitor="val/loss", check_finite=1), "check_finite"),
])
def test_early_stopping_bad_arguments(kwargs, match):
    with pytest.raises((TypeError, ValueError), match=match):  # TypeError: not a number
        EarlyStopping(**kwargs)


@pytest.mark.parametrize("split", [0, 2, 4, 6])
def test_early_stopping_state_dict_round_trip_continues_counting(split):
    values = [1.0, 0.5, 0.75, 0.4375, 0.375, 0.5, 0.3125, 0.5, 0.25]
    reference = EarlyStopping("val/loss", patience=3, min_delta=0.0625)
    expected, _ = replay(reference, values)
    assert expected == 8
    first = EarlyStopping("val/loss", patience=3, min_delta=0.0625)
    assert replay(first, values[:split])[0] is None
    saved = json.loads(json.dumps(first.state_dict(), allow_nan=False))  # strict JSON
    resumed = EarlyStopping("val/loss", patience=3, min_delta=0.0625)
    resumed.load_state_dict(saved)
    at, _ = replay(resumed, values[split:], start=split + 1)
    assert at == expected
    assert resumed.state_dict() == reference.state_dict()


# --- ModelCheckpoint ---------------------------------------------------------------------------


class FakeSaver:
    """Writes a small checkpoint directory; logs each save and what existed at that moment."""

    def __init__(self, events):
        self.events = events

    def __call__(self, path, loop):
        self.events.append(("save", os.path.basename(path), set(os.listdir(os.path.dirname(path)))))
        os.makedirs(path)
        with open(os.path.join(path, "state.txt"), "w") as f:
            f.write(str(loop.step))


@pytest.fixture
def events(monkeypatch):
    """Save events from FakeSaver and deletion events from a spy on shutil.rmtree."""
    log = []
    rmtree = shutil.rmtree

    def spy(path, *args, **kwargs):
        log.append(("delete", os.path.basename(path)))
        rmtree(path, *args, **kwargs)

    monkeypatch.setattr(shutil, "rmtree", spy)
    return log


def steps_on_disk(ckpt):
    """(top-k names, last names) in the checkpoint directory."""
    d = ckpt.dirpath
    names = sorted(os.listdir(d)) if d is not None and os.path.isdir(d) else []
    return [n for n in names if not n.startswith("last")], [n for n in names
                                                            if n.startswith("last")]


def run_checkpoint(ckpt, values, tmp_path, key="val/loss"):
    """Replay ``values``; return the kept steps (ranked list) after each check, from disk."""
    loop = Loop(state=None, step=0, epoch=0, run_dir=str(tmp_path))
    ckpt.on_run_start(loop)
    kept = []
    for i, v in enumerate(values, start=1):
        loop.step = i
        ckpt.on_eval(loop, {key: v})
        best, _ = steps_on_disk(ckpt)
        on_disk = sorted(int(re.search(r"step_(\d+)", n).group(1)) for n in best)
        assert on_disk == sorted(step for _, step, _ in ckpt.best_k)  # disk == bookkeeping
        kept.append(on_disk)
    return kept


@pytest.mark.parametrize("mode, k, values, kept, best", [
    # a tie with the worst kept does not replace it; NaN never enters a full list
    ("min", 2, [0.5, 0.25, 0.5, 0.375, NAN, 0.125],
     [[1], [1, 2], [1, 2], [2, 4], [2, 4], [2, 6]], 6),
    ("min", 1, [0.5, NAN, 0.5, 0.25], [[1], [1], [1], [4]], 4),
    # NaN is kept while there is room, ranked worst, evicted first, never best
    ("min", 2, [NAN, 0.5, 0.25], [[1], [1, 2], [2, 3]], 3),
    # among tied worst, the oldest is evicted (Lightning's dict order)
    ("min", 2, [0.5, 0.5, 0.25], [[1], [1, 2], [2, 3]], 3),
    ("max", 2, [0.5, 0.75, 0.5, 0.75], [[1], [1, 2], [1, 2], [2, 4]], 2),
    ("min", 0, [0.5, 0.25], [[], []], None),
    ("min", -1, [0.5, NAN, 0.25, 0.75], [[1], [1, 2], [1, 2, 3], [1, 2, 3, 4]], 3),
])
def test_model_checkpoint_top_k(tmp_path, events, mode, k, values, kept, best):
    ckpt = ModelCheckpoint("val/loss", mode=mode, save_top_k=k, saver=FakeSaver(events))
    assert run_checkpoint(ckpt, values, tmp_path) == kept
    assert (ckpt.best_path is None) == (best is None)
    if best is not None:
        assert f"step_{best:09d}" in ckpt.best_path and ckpt.best_k[0][1] == best
    # every eviction happened after the replacement was written, while the old one existed
    for i, e in enumerate(events):
        if e[0] == "delete":
            assert events[i - 1][0] == "save" and e[1] in events[i - 1][2]


def test_model_checkpoint_names_and_ranked_list(tmp_path, events):
    ckpt = ModelCheckpoint("val/loss", save_top_k=3, saver=FakeSaver(events))
    run_checkpoint(ckpt, [0.5, NAN, 0.1234], tmp_path)
    names = [os.path.basename(p) for _, _, p in ckpt.best_k]
    assert names == ["best-step_000000003-val_loss=0.1234", "best-step_000000001-val_loss=0.5",
                     "best-step_000000002-val_loss=nan"]
    assert ckpt.dirpath == os.path.join(str(tmp_path), "checkpoints")
    assert ckpt.best_score == 0.1234


def test_model_checkpoint_save_last_replaces_after_writing(tmp_path, events):
    ckpt = ModelCheckpoint("val/loss", save_top_k=1, save_last=True, saver=FakeSaver(events))
    run_checkpoint(ckpt, [0.5, 0.75, 0.25], tmp_path)
    assert steps_on_disk(ckpt) == (["best-step_000000003-val_loss=0.25"],
                                   ["last-step_000000003"])
    assert ckpt.last_path.endswith("last-step_000000003") and ckpt.last_step == 3
    order = [(e[0], e[1]) for e in events]
    assert order == [("save", "best-step_000000001-val_loss=0.5"),
                     ("save", "last-step_000000001"),
                     ("save", "last-step_000000002"), ("delete", "last-step_000000001"),
                     ("save", "best-step_000000003-val_loss=0.25"),
                     ("delete", "best-step_000000001-val_loss=0.5"),
                     ("save", "last-step_000000003"), ("delete", "last-step_000000002")]


def test_model_checkpoint_save_last_only(tmp_path, events):
    ckpt = ModelCheckpoint("val/loss", save_top_k=0, save_last=True, saver=FakeSaver(events))
    run_checkpoint(ckpt, [0.5, 0.25], tmp_path)
    assert steps_on_disk(ckpt) == ([], ["last-step_000000002"])


@pytest.mark.parametrize("k, kept", [(1, ["ckpt-step_000000003"]),
                                     (-1, [f"ckpt-step_00000000{i}" for i in (1, 2, 3)])])
def test_model_checkpoint_without_monitor(tmp_path, events, k, kept):
    ckpt = ModelCheckpoint(save_top_k=k, saver=FakeSaver(events))
    run_checkpoint(ckpt, [0.5, 0.25, 0.75], tmp_path)
    assert sorted(os.listdir(ckpt.dirpath)) == kept
    assert os.path.basename(ckpt.best_path) == "ckpt-step_000000003"
    assert ckpt.best_score is None


def test_model_checkpoint_every_n_evals(tmp_path, events):
    ckpt = ModelCheckpoint("val/loss", save_top_k=-1, save_last=True, every_n_evals=2,
                           saver=FakeSaver(events))
    assert run_checkpoint(ckpt, [0.5, 0.4, 0.3, 0.2, 0.1], tmp_path)[-1] == [2, 4]
    assert steps_on_disk(ckpt)[1] == ["last-step_000000005"]


def test_model_checkpoint_failed_save_keeps_the_old_checkpoint(tmp_path, events):
    saver = FakeSaver(events)
    ckpt = ModelCheckpoint("val/loss", save_top_k=1, saver=saver)
    run_checkpoint(ckpt, [0.5], tmp_path)
    before = (list(ckpt.best_k), ckpt.state_dict())

    def failing(path, loop):
        raise OSError("disk full")

    ckpt.saver = failing
    with pytest.raises(OSError, match="disk full"):
        ckpt.on_eval(Loop(state=None, step=2, epoch=0), {"val/loss": 0.25})
    assert (ckpt.best_k, ckpt.state_dict()) == before
    assert steps_on_disk(ckpt)[0] == ["best-step_000000001-val_loss=0.5"]


def test_model_checkpoint_train_monitor_checks_on_log(tmp_path, events):
    ckpt = ModelCheckpoint("train/loss", save_top_k=1, saver=FakeSaver(events))
    loop = Loop(state=None, step=5, epoch=0, run_dir=str(tmp_path))
    ckpt.on_run_start(loop)
    ckpt.on_eval(loop, {"val/loss": 1.0})
    assert ckpt.best_k == []
    ckpt.on_log(loop, {"train/loss": 1.0})
    ckpt.on_log(loop, {"train/loss": 0.5})  # same step: already checked
    assert [s for s, _, _ in ckpt.best_k] == [1.0]


@pytest.mark.parametrize("split", [1, 3, 5])
def test_model_checkpoint_state_dict_round_trip(tmp_path, events, split):
    values = [0.5, NAN, 0.25, 0.5, 0.375, 0.125, 0.25]
    ref = ModelCheckpoint("val/loss", save_top_k=2, save_last=True, saver=FakeSaver(events))
    run_checkpoint(ref, values, tmp_path / "ref")
    first = ModelCheckpoint("val/loss", save_top_k=2, save_last=True, saver=FakeSaver(events))
    run_checkpoint(first, values[:split], tmp_path / "run")
    saved = json.loads(json.dumps(first.state_dict(), allow_nan=False))
    resumed = ModelCheckpoint("val/loss", save_top_k=2, save_last=True, saver=FakeSaver(events))
    resumed.load_state_dict(saved)
    loop = Loop(state=None, step=0, epoch=0, run_dir=str(tmp_path / "run"))
    resumed.on_run_start(loop)
    replay(resumed, values[split:], loop=loop, start=split + 1)
    assert steps_on_disk(resumed) == steps_on_disk(ref)
    strip = lambda d: {**d, "dirpath": None, "best_k": [e[:2] for e in d["best_k"]],
                       "last_path": os.path.basename(d["last_path"])}
    assert strip(resumed.state_dict()) == strip(ref.state_dict())
    with pytest.raises(ValueError, match="monitor='val/acc'"):
        ModelCheckpoint("val/acc").load_state_dict(saved)


def test_model_checkpoint_saves_last_at_the_end_of_a_stopped_run(tmp_path, events):
    ckpt = ModelCheckpoint("val/loss", save_top_k=1, save_last=True, saver=FakeSaver(events))
    loop = Loop(state=None, step=4, epoch=0, run_dir=str(tmp_path))
    ckpt.on_run_start(loop)
    ckpt.on_eval(loop, {"val/loss": 1.0})
    loop.step = 7
    loop.request_stop("received SIGTERM")
    ckpt.on_run_end(loop)
    assert steps_on_disk(ckpt)[1] == ["last-step_000000007"]
    loop.step = 9
    loop.error = RuntimeError("the step failed")  # what fit sets when the run fails
    ckpt.on_run_end(loop)  # an exception is propagating: do not save a failing state
    assert steps_on_disk(ckpt)[1] == ["last-step_000000007"]


def test_model_checkpoint_errors(tmp_path):
    with pytest.raises(ValueError, match="save_top_k: expected -1, 0 or 1 with monitor=None"):
        ModelCheckpoint(save_top_k=2)
    with pytest.raises(ValueError, match="save_top_k"):
        ModelCheckpoint("val/loss", save_top_k=-2)
    with pytest.raises(ValueError, match="every_n_evals"):
        ModelCheckpoint("val/loss", every_n_evals=0)
    with pytest.raises(TypeError, match="saver"):
        ModelCheckpoint("val/loss", saver="ckpt")
    with pytest.raises(ValueError, match="HINT: pass fit"):
        ModelCheckpoint("val/loss").on_run_start(Loop(state=None, step=0, epoch=0))
    ckpt = ModelCheckpoint("val/loss", dirpath=tmp_path, saver=lambda p, loop: None)
    ckpt.on_run_start(Loop(state=None, step=0, epoch=0))
    with pytest.raises(ValueError, match=r"expected 'val/loss' among the evaluation metrics"):
        ckpt.on_eval(Loop(state=None, step=1, epoch=0), {"val/acc": 1.0})


def test_model_checkpoint_default_saver_uses_functrain_checkpoint(tmp_path, monkeypatch):
    calls = []
    fake = types.ModuleType("functrain.checkpoint")
    fake.save = lambda path, state, *, meta=None, **kw: calls.append((path, state, meta))
    monkeypatch.setitem(sys.modules, "functrain.checkpoint", fake)
    ckpt = ModelCheckpoint("val/loss", dirpath=tmp_path)
    loop = Loop(state="STATE", step=3, epoch=1)
    ckpt.on_run_start(loop)
    ckpt.on_eval(loop, {"val/loss": 0.5})
    (path, state, meta), = calls
    assert state == "STATE" and path.endswith("best-step_000000003-val_loss=0.5")
    assert meta["step"] == 3 and meta["epoch"] == 1
    # the metadata already holds the bookkeeping that includes this checkpoint
    assert meta["callbacks"][ckpt.state_key]["best_k"] == [[0.5, 3, os.path.basename(path)]]
    monkeypatch.setitem(sys.modules, "functrain.checkpoint", None)  # import fails
    loop.step = 4
    with pytest.raises(RuntimeError, match="HINT: pass saver="):
        ckpt.on_eval(loop, {"val/loss": 0.25})


# --- monitors ----------------------------------------------------------------------------------


def test_throughput_monitor_rates_skip_evaluation_time():
    tm = ThroughputMonitor(batch_size=8, flops_per_sample=100.0, peak_flops=1e4)
    ticks = iter([0.0, 2.0, 5.0, 6.0])
    tm._clock = lambda: next(ticks)
    loop = Loop(state=None, step=0, epoch=0)
    tm.on_run_start(loop)  # t=0
    loop.step = 10
    tm.on_log(loop, {})  # t=2: 10 steps in 2 s
    assert tm.latest == {"throughput/steps_per_s": 5.0, "throughput/samples_per_s": 40.0,
                         "throughput/flops_per_s": 4000.0, "throughput/mfu": 0.4}
    assert loop.metrics == tm.latest  # published into loop.metrics (the loop has no log())
    loop.step = 15
    tm.on_eval(loop, {})  # t=5: the window restarts after the evaluation
    loop.step = 20
    tm.on_log(loop, {})  # t=6: 5 steps in 1 s
    assert tm.latest["throughput/steps_per_s"] == 5.0


def test_throughput_monitor_reads_loop_samples_and_uses_loop_log():
    class LoggingLoop(Loop):
        def log(self, values):
            self.logged = dict(values)

    tm = ThroughputMonitor()
    ticks = iter([0.0, 4.0])
    tm._clock = lambda: next(ticks)
    loop = LoggingLoop(state=None, step=0, epoch=0)
    loop.samples = 0
    tm.on_run_start(loop)
    loop.step, loop.samples = 4, 100
    tm.on_log(loop, {})
    assert loop.logged == {"throughput/steps_per_s": 1.0, "throughput/samples_per_s": 25.0}
    assert loop.metrics == {}
    with pytest.raises(ValueError, match="peak_flops"):
        ThroughputMonitor(peak_flops=0)


def _opt_state(opt):
    params = {"w": torch.zeros(2), "b": torch.zeros(1)}
    return types.SimpleNamespace(opt_state=opt.init(params))


@pytest.mark.parametrize("build, expected", [
    (lambda o: o.inject_hyperparams(o.adamw)(learning_rate=0.25), {"lr": 0.25}),
    (lambda o: o.chain(o.clip(1.0), o.inject_hyperparams(o.adam)(learning_rate=0.5)),
     {"lr": 0.5}),
    (lambda o: o.chain(o.inject_hyperparams(o.sgd)(learning_rate=0.25),
                       o.inject_hyperparams(o.scale)(-1.0),
                       o.inject_hyperparams(o.sgd)(learning_rate=0.5)),
     {"lr/0": 0.25, "lr/2": 0.5}),
    (lambda o: o.chain(o.inject_hyperparams(o.scale)(-1.0),
                       o.inject_hyperparams(o.sgd)(learning_rate=0.5)),
     {"lr": 0.5}),  # only one state holds a learning rate
    (lambda o: o.multi_transform({"fast": o.inject_hyperparams(o.sgd)(learning_rate=0.5),
                                  "slow": o.inject_hyperparams(o.sgd)(learning_rate=0.125)},
                                 {"w": "fast", "b": "slow"}),
     {"lr/fast": 0.5, "lr/slow": 0.125}),
    (lambda o: o.masked(o.inject_hyperparams(o.sgd)(learning_rate=0.5), {"w": True, "b": False}),
     {"lr": 0.5}),
    (lambda o: o.MultiSteps(o.inject_hyperparams(o.adam)(learning_rate=0.5), 2), {"lr": 0.5}),
    (lambda o: o.apply_if_finite(o.inject_hyperparams(o.sgd)(learning_rate=0.5), 3),
     {"lr": 0.5}),
])
def test_learning_rate_monitor_finds_nested_injected_states(build, expected):
    state = _opt_state(build(ft.optim))
    loop, lrm = Loop(state=state, step=3, epoch=0), LearningRateMonitor()
    lrm.on_run_start(loop)
    lrm.on_log(loop, {})
    assert lrm.latest == expected and loop.metrics == expected
    assert {k: v.compute().item() for k, v in lr_metrics(state.opt_state).items()} == expected


def test_learning_rate_monitor_other_hyperparams_schedule_and_errors():
    state = _opt_state(ft.optim.inject_hyperparams(ft.optim.sgd)(learning_rate=0.5,
                                                                  momentum=0.875))
    lrm = LearningRateMonitor(hyperparams=("learning_rate", "momentum"))
    lrm.on_log(Loop(state=state, step=1, epoch=0), {})
    assert lrm.latest == {"lr": 0.5, "momentum": 0.875}
    sched = ft.optim.linear_schedule(1.0, 0.0, 8)
    lrm = LearningRateMonitor(schedule={"lr": sched, "lr/x2": lambda s: 2 * sched(s)})
    lrm.on_run_start(Loop(state=None, step=0, epoch=0))  # nothing to find in the state: fine
    lrm.on_log(Loop(state=None, step=5, epoch=0), {})
    assert lrm.latest == {"lr": 0.5, "lr/x2": 1.0}  # the value the 5th update used
    with pytest.raises(ValueError, match="HINT: build the optimizer with"):
        LearningRateMonitor().on_run_start(Loop(state=_opt_state(ft.optim.sgd(0.1)), step=0,
                                                epoch=0))
    with pytest.raises(TypeError, match="schedule"):
        LearningRateMonitor(schedule=0.1)


def test_lr_metrics_follows_an_injected_schedule_through_updates():
    opt = ft.optim.inject_hyperparams(ft.optim.sgd)(
        learning_rate=ft.optim.linear_schedule(1.0, 0.0, 4))
    params = {"w": torch.zeros(1)}
    state = opt.init(params)
    for _ in range(3):
        _, state = opt.update({"w": torch.ones(1)}, state, params)
    assert lr_metrics(state)["lr"].compute().item() == 0.5  # used by update 3 (count 2)


def test_norm_metrics():
    g = {"a": torch.tensor([3.0]), "b": torch.tensor([4.0])}
    m = norm_metrics(grads=g, params={"w": torch.ones(4)}, updates=g)
    assert {k: v.compute().item() for k, v in m.items()} == {
        "grad_norm": 5.0, "param_norm": 2.0, "update_norm": 5.0}
    acc = ft.metrics.empty_like(m)
    for scale in (1.0, 3.0):
        acc = ft.metrics.merge_all(acc, norm_metrics(grads=ft.tree.map(lambda x, s=scale: s * x, g),
                                                     params={"w": torch.ones(4)}, updates=g))
    assert ft.metrics.compute_all(acc)["grad_norm"] == 10.0  # mean of 5 and 15
    last = norm_metrics(grads=g, reduce="last")
    assert isinstance(last["grad_norm"], ft.metrics.Last)
    with pytest.raises(ValueError, match="got none"):
        norm_metrics()
    with pytest.raises(ValueError, match="reduce"):
        norm_metrics(grads=g, reduce="max")


# --- with fit ----------------------------------------------------------------------------------


def _model():
    torch.manual_seed(0)
    return nn.Linear(4, 1)


def _data(n=4, batch=8):
    g = torch.Generator().manual_seed(0)
    return [(torch.randn(batch, 4, generator=g), torch.randn(batch, 1, generator=g))
            for _ in range(n)]


def _step(model, extra=None):
    def step(state, batch):
        x, y = batch

        def loss_fn(params):
            out, _ = ft.call(model, params, state.buffers, x)
            return ((out - y) ** 2).mean()

        grads, loss = torch.func.grad_and_value(loss_fn)(state.params)
        new = state.apply_gradients(grads)
        metrics = {"loss": loss, **norm_metrics(grads=grads, params=new.params)}
        if extra == "lr":
            metrics.update(lr_metrics(new.opt_state))
        return new, metrics

    return step


def test_fit_stops_at_the_expected_evaluation_and_keeps_the_best(tmp_path, events):
    # the validation loss at evaluation i (step 2i) is scripted, read from the state's step
    def eval_fn(state, batch):
        script = state.extras["script"]
        return {"loss": script.gather(0, (state.step // 2 - 1).reshape(1))[0]}

    model = _model()
    stopper = EarlyStopping("val/loss", patience=3)
    ckpt = ModelCheckpoint("val/loss", save_top_k=2, save_last=True, saver=FakeSaver(events))
    state = ft.TrainState.create(model, ft.optim.sgd(0.01),
                                 script=torch.tensor([1.0, 0.8, 0.9, 0.85, 0.81, 0.1, 0.1]))
    # the script has no entry for step 0: no sanity evaluation
    state = ft.fit(_step(model), state, _data(4), epochs=20, eval_fn=eval_fn,
                   eval_loader=_data(1), eval_every=2, callbacks=[stopper, ckpt, ft.Logging(
                       loggers=[], progress=False, summary=False, sanity_eval=0)],
                   run_dir=tmp_path, compile="eager")
    assert int(state.step) == 10 and stopper.stopped_step == 10
    assert stopper.reason == ("EarlyStopping: val/loss did not improve in the last 3 checks "
                              "(best 0.8 at step 4).")
    assert steps_on_disk(ckpt) == (["best-step_000000004-val_loss=0.8",
                                    "best-step_000000010-val_loss=0.81"],
                                   ["last-step_000000010"])


def _count_fit(tmp_path, callbacks, extra=None):
    model = _model()
    state = ft.TrainState.create(
        model, ft.optim.inject_hyperparams(ft.optim.adamw)(learning_rate=1e-3))
    with count_host_syncs() as counts:
        ft.fit(_step(model, extra), state, _data(40), epochs=1, callbacks=[*callbacks,
                                                                           ft.Logging.quiet(10)],
               run_dir=tmp_path, compile="eager")
    return counts


def test_callbacks_add_no_host_sync(tmp_path, events):
    baseline = _count_fit(tmp_path, [])
    assert baseline["tolist"] == 4  # fit's own reads: one per log window
    callbacks = [EarlyStopping("train/loss", patience=100),
                 ModelCheckpoint("train/loss", save_top_k=2, save_last=True,
                                 saver=FakeSaver(events)),
                 ThroughputMonitor(batch_size=8, flops_per_sample=10.0, peak_flops=1e9)]
    assert _count_fit(tmp_path, callbacks) == baseline
    assert sum(e[0] == "save" for e in events) >= 5  # they did run
    # the learning rate returned from the step joins the window's single read
    assert _count_fit(tmp_path, [], extra="lr") == baseline
    # LearningRateMonitor reads the state: one batched read per log window, never per step
    with_monitor = _count_fit(tmp_path, [LearningRateMonitor()])
    assert with_monitor == {**baseline, "tolist": baseline["tolist"] + 4}


def _scripted_run(run_dir, stop_at=None, resume=None):
    """A fit whose validation loss follows a script: 5, 4, 4.5, 3, 3.5, 3.8, 3.9, 4, ..."""
    torch.manual_seed(0)
    model = nn.Linear(2, 1)
    script = torch.tensor([5.0, 4.0, 4.5, 3.0, 3.5, 3.8, 3.9, 4.0, 4.1, 4.2, 4.3, 4.4])

    def step(state, batch):
        extras = dict(state.extras, evals=state.extras["evals"])
        return state.replace(step=state.step + 1, extras=extras), {"x": batch.sum()}

    def eval_fn(state, batch):
        i = (state.step // 4 - 1).reshape(1)  # the evaluation's index, as a tensor
        return {"loss": script[i].squeeze() + 0 * batch.sum()}

    class StopAt(ft.Callback):
        def on_eval(self, loop, metrics):
            if loop.step == stop_at:
                loop.request_stop("pre-empted")

    early = EarlyStopping("val/loss", patience=4)
    best = ModelCheckpoint("val/loss", save_top_k=2)
    state = ft.TrainState.create(model, ft.optim.sgd(0.1), evals=torch.zeros(()))
    ft.fit(step, state, [torch.ones(2)] * 4, epochs=12, eval_fn=eval_fn,
           eval_loader=[torch.ones(1)], compile="eager", run_dir=run_dir,
           callbacks=[ft.Checkpointing(4), early, best, StopAt(),
                      ft.Logging(progress=False, summary=False)], resume=resume)
    return early, best


def test_resumed_fit_continues_patience_and_best_k(tmp_path):
    straight_es, straight_mc = _scripted_run(str(tmp_path / "a"))
    assert straight_es.stopped_step == 32  # best 3.0 at step 16, then 4 evaluations worse
    _scripted_run(str(tmp_path / "b"), stop_at=24)  # pre-empted after 2 worse evaluations
    es, mc = _scripted_run(str(tmp_path / "b"), resume="auto")  # fresh callback objects
    assert es.state_dict() == straight_es.state_dict()
    assert [(s, step) for s, step, _ in mc.best_k] == [(s, step) for s, step, _ in
                                                       straight_mc.best_k] == [(3.0, 16),
                                                                               (3.5, 20)]
    assert json.load(open(tmp_path / "b" / "hparams.json"))["start_step"] == 24


def test_eval_every_steps_and_hparams(tmp_path):
    torch.manual_seed(0)
    model = nn.Linear(2, 1)
    evals = []

    class Count(ft.Callback):
        def on_eval(self, loop, metrics):
            evals.append(loop.step)

    def step(state, batch):
        return state.replace(step=state.step + 1), {"x": batch.sum()}

    state = ft.TrainState.create(model, ft.optim.sgd(0.1))
    ft.fit(step, state, [torch.ones(2)] * 3, epochs=7, eval_fn=lambda s, b: {"y": b.sum()},
           eval_loader=[torch.ones(1)], eval_every=9, compile="eager",  # every 3 epochs
           run_dir=tmp_path, callbacks=[Count(), ft.Logging(hparams={"lr": 0.1, "width": 64},
                                                            progress=False, summary=False)])
    assert evals == [9, 18, 21]  # after epochs 3 and 6, and at the end of training
    assert json.load(open(tmp_path / "hparams.json"))["width"] == 64
