"""Regression tests for issue 12: checkpoint safety, honest stops, hostile inputs.

Each test names the defect it guards (numbers as in the issue).
"""

from __future__ import annotations

import errno
import hashlib
import json
import math
import os
import shutil
import subprocess
import sys
import textwrap
import threading
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

import functrain as ft
from functrain import checkpoint as ckpt
from functrain.callbacks import EarlyStopping, ModelCheckpoint
from functrain.checkpoint import _save as ckpt_save

pytestmark = pytest.mark.filterwarnings("ignore:torch.distributed is disabled")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QUIET = {"compile": "eager", "progress": False, "summary": False}


def fit(step_fn, state, loader, *, checkpoint_every=None, keep=3, log_every=50, loggers=None,
        on_nonfinite=None, on_recompile=None, progress=False, summary=False, compile="eager",
        callbacks=(), **kwargs):
    """`ft.fit` with the run's settings spelled as plain arguments (Logging, Checkpointing,
    NonFiniteGuard, compile_step built here), so that each test reads as one call."""
    if isinstance(callbacks, (list, tuple)):
        callbacks = list(callbacks)
        if on_nonfinite is not None:
            callbacks.append(ft.callbacks.NonFiniteGuard(on_nonfinite))
    if on_nonfinite == "skip":  # skipping updates is an optimizer wrapper
        wrapped = ft.optim.apply_if_finite(state.tx, 2**31 - 1)
        fresh = wrapped.init(state.params)
        state = state.replace(tx=wrapped, opt_state=fresh._replace(inner_state=state.opt_state))
    if on_recompile is not None:
        step_fn = ft.compile_step(step_fn, compile=compile, on_recompile=on_recompile)
    else:
        kwargs["compile"] = compile
    log = ft.Logging(every=log_every, loggers=[] if loggers is False else loggers,
                     progress=progress, summary=summary)
    checkpoint = None if checkpoint_every is None else ft.Checkpointing(every=checkpoint_every,
                                                                       keep=keep)
    if isinstance(callbacks, list):  # else: the argument error under test
        callbacks += [log] + ([checkpoint] if checkpoint else [])
    return ft.fit(step_fn, state, loader, callbacks=callbacks, **kwargs)
# Tests of defects not fixed yet: they must fail (strict), and lose this mark with the fix.
pending = pytest.mark.xfail(strict=True, reason="issue 12: not fixed yet")


def make_state(seed: int = 0, lr: float = 0.05) -> ft.TrainState:
    torch.manual_seed(seed)
    return ft.TrainState.create(nn.Linear(3, 1), ft.optim.sgd(lr), seed=seed)


def step(state, batch):
    x, y = batch

    def loss_fn(params):
        out, _ = ft.call(state.module, params, state.buffers, x)
        return ((out - y) ** 2).mean()

    grads, loss = torch.func.grad_and_value(loss_fn)(state.params)
    return state.apply_gradients(grads), {"loss": loss}


def eval_fn(state, batch):
    x, y = batch
    out, _ = ft.call(state.module, state.params, state.buffers, x)
    return {"loss": ((out - y) ** 2).mean()}


def make_data(n: int = 4, seed: int = 0, bad: int | None = None):
    g = torch.Generator().manual_seed(seed)
    data = [(torch.randn(4, 3, generator=g), torch.randn(4, 1, generator=g)) for _ in range(n)]
    if bad is not None:  # a batch whose inputs overflow: NaN gradients, NaN params after it
        data[bad] = (torch.full((4, 3), float("inf")), data[bad][1])
    return data


def snapshot(directory: Path) -> dict[str, str]:
    """Every file under ``directory`` by relative path -> SHA-256."""
    return {str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(directory.rglob("*")) if p.is_file()}


def finite(state) -> bool:
    return all(bool(torch.isfinite(x).all()) for x in ft.tree.leaves(state.params))


# --- 1: restored paths are never trusted ------------------------------------------------------


def test_resumed_copy_of_a_run_writes_and_deletes_only_in_its_own_run_dir(tmp_path):
    a, b = tmp_path / "A", tmp_path / "B"
    data = make_data()

    def run(run_dir, epochs):
        cb = ModelCheckpoint("val/loss", save_top_k=1, save_last=True)
        fit(step, make_state(), data, epochs=epochs, eval_fn=eval_fn, eval_loader=data[:1],
               callbacks=[cb], run_dir=run_dir, checkpoint_every=4, resume="auto",
               loggers=False, **QUIET)
        return cb

    run(a, 2)
    before = snapshot(a)
    shutil.copytree(a, b)
    cb = run(b, 4)
    assert snapshot(a) == before  # A is untouched: nothing written, nothing deleted
    assert (b / "checkpoints" / "last-step_000000016").is_dir()
    for _, _, p in cb.best_k:
        assert Path(p).parent == b / "checkpoints"
    assert Path(cb.last_path).parent == b / "checkpoints"


def _saver(path, loop):
    os.makedirs(path, exist_ok=True)


def _ckpt_state(dirpath, best, last=None):
    return {"monitor": "val/loss", "mode": "min", "dirpath": str(dirpath),
            "best_k": [[0.9, 1, str(best)]], "last_path": None if last is None else str(last),
            "last_step": None if last is None else 1, "checks": 1}


def test_model_checkpoint_refuses_a_restored_path_that_is_not_one_of_its_checkpoints(tmp_path):
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "precious.txt").write_text("x")
    cb = ModelCheckpoint("val/loss", save_top_k=1, saver=_saver)
    with pytest.raises(ValueError, match=r"best_k.*victim"):
        cb.load_state_dict(_ckpt_state(tmp_path, victim))
    with pytest.raises(ValueError, match=r"last_path"):
        cb.load_state_dict(_ckpt_state(tmp_path, tmp_path / "best-step_000000001-val_loss=0.9",
                                       last=tmp_path / ".." / ".."))
    assert (victim / "precious.txt").exists()


def test_model_checkpoint_reroots_restored_paths_under_the_current_run_dir(tmp_path):
    other = tmp_path / "other" / "checkpoints"
    old = other / "best-step_000000001-val_loss=0.9"
    old.mkdir(parents=True)
    cb = ModelCheckpoint("val/loss", save_top_k=1, saver=_saver)
    cb.load_state_dict(_ckpt_state(other, old))
    loop = ft.Loop(state=None, step=2, epoch=0, run_dir=str(tmp_path / "mine"))
    cb.on_run_start(loop)
    cb.on_eval(loop, {"val/loss": 0.5})  # better: evicts the restored best
    assert old.is_dir()  # the other run's checkpoint is not deleted
    assert cb.dirpath == str(tmp_path / "mine" / "checkpoints")
    assert [Path(p).parent for _, _, p in cb.best_k] == [tmp_path / "mine" / "checkpoints"]


# --- 2: a non-finite guard keeps only finite checkpoints ---------------------------------------


@pytest.mark.parametrize("on_nonfinite", ["stop", "raise"])
def test_nonfinite_guard_writes_only_finite_checkpoints(tmp_path, on_nonfinite):
    data = make_data(10, bad=5)  # step 6 makes params NaN; the window is read at step 10
    kwargs = dict(epochs=1, checkpoint_every=2, keep=2, log_every=5, run_dir=tmp_path,
                  on_nonfinite=on_nonfinite, loggers=False, **QUIET)
    if on_nonfinite == "raise":
        with pytest.raises(FloatingPointError):
            fit(step, make_state(), data, **kwargs)
    else:
        fit(step, make_state(), data, **kwargs)
    mgr = ckpt.CheckpointManager(tmp_path / "checkpoints")
    kept = mgr.all()
    assert kept, "the newest finite checkpoint must survive"
    for p in kept:
        assert finite(ckpt.restore(p, like=make_state())), p.name
    assert mgr.latest().name == "step_000000004"  # the newest finite one
    resumed = fit(step, make_state(), make_data(10), epochs=1, run_dir=tmp_path,
                  resume="auto", loggers=False, on_nonfinite=on_nonfinite, **QUIET)
    assert finite(resumed)


# --- 3: zero-element tensors round-trip ----------------------------------------------------


@pytest.mark.parametrize("shape", [(0,), (0, 3), (3, 0), (2, 0, 4)])
def test_zero_element_tensors_round_trip(tmp_path, shape):
    state = {"empty": torch.empty(shape), "full": torch.arange(3.0),
             "ints": torch.zeros(shape, dtype=torch.int64)}
    ckpt.save(tmp_path / "c", state, meta={"cache": torch.empty(shape), "n": 1})
    back = ckpt.restore(tmp_path / "c", like={k: torch.ones_like(v) for k, v in state.items()})
    for k, v in state.items():
        assert back[k].shape == v.shape and back[k].dtype == v.dtype and torch.equal(back[k], v)
    meta = ckpt.load_meta(tmp_path / "c")
    assert meta["cache"].shape == shape and meta["n"] == 1


def test_registered_empty_buffer_round_trips_through_a_train_state(tmp_path):
    model = nn.Linear(2, 2)
    model.register_buffer("cache", torch.empty(0))
    state = ft.TrainState.create(model, ft.optim.adam(1e-3))
    ckpt.save(tmp_path / "c", state)
    back = ckpt.restore(tmp_path / "c", like=state)
    assert back.buffers["cache"].shape == (0,)


# --- 4: an async save is never lost at interpreter exit ----------------------------------


ASYNC_EXIT = textwrap.dedent("""
    import sys, torch, functrain as ft
    mgr = ft.checkpoint.CheckpointManager(sys.argv[1])
    if sys.argv[2] == "fail":
        def boom(self, path, state, meta):
            raise OSError(28, "No space left on device (simulated)")
        ft.checkpoint.CheckpointManager._write = boom
    mgr.save(1, {"w": torch.arange(100000.0)}, meta={"epoch": 1}, blocking=False)
    # the script ends here: a normal interpreter exit with the save still running
""")


def test_async_save_followed_by_interpreter_exit_is_completed(tmp_path):
    script = tmp_path / "s.py"
    script.write_text(ASYNC_EXIT)
    out = subprocess.run([sys.executable, str(script), str(tmp_path / "ck"), "ok"],
                         env={**os.environ, "PYTHONPATH": ROOT}, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    p = ckpt.CheckpointManager(tmp_path / "ck").latest()
    assert p is not None and p.name == "step_000000001"
    assert torch.equal(ckpt.restore(p, like={"w": torch.zeros(100000)})["w"],
                       torch.arange(100000.0))


def test_async_save_failing_at_interpreter_exit_fails_the_process(tmp_path):
    script = tmp_path / "s.py"
    script.write_text(ASYNC_EXIT)
    out = subprocess.run([sys.executable, str(script), str(tmp_path / "ck"), "fail"],
                         env={**os.environ, "PYTHONPATH": ROOT}, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode != 0
    assert "No space left on device (simulated)" in out.stderr
    assert "step_000000001" in out.stderr  # names the checkpoint that was not written


# --- 11: a full disk is reported as such --------------------------------------------------


def test_full_disk_is_an_oserror_naming_the_path(tmp_path, monkeypatch):
    mgr = ckpt.CheckpointManager(tmp_path / "ck")
    mgr.save(1, {"w": torch.ones(10)})
    real = ckpt_save._dcp_save

    def full(state_dict, directory):
        real(state_dict, directory)  # what torch raises on a full disk: not an OSError
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")

    monkeypatch.setattr(ckpt_save, "_dcp_save", full)
    monkeypatch.setattr(ckpt_save, "_free_bytes", lambda path: 100)
    for blocking in (True, False):
        with pytest.raises(OSError, match="no space left on device") as info:
            mgr.save(2, {"w": torch.ones(1000)}, blocking=blocking)
            mgr.wait()
        assert info.value.errno == errno.ENOSPC
        assert "step_000000002" in str(info.value)
    assert [p.name for p in mgr.all()] == ["step_000000001"]  # the earlier one intact
    ckpt.verify(mgr.path(1))


def test_enospc_from_a_write_names_the_checkpoint(tmp_path, monkeypatch):
    def full(state_dict, directory):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ckpt_save, "_dcp_save", full)
    with pytest.raises(OSError, match=r"no space left on device.*step_5") as info:
        ckpt.save(tmp_path / "step_5", {"w": torch.ones(3)})
    assert info.value.errno == errno.ENOSPC


@pytest.fixture
def tiny_disk(tmp_path):
    mount = tmp_path / "tiny"
    mount.mkdir()
    try:
        res = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)],
                             capture_output=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        pytest.skip("cannot mount a tmpfs here")
    if res.returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], capture_output=True, timeout=30)


def test_full_tmpfs_is_an_oserror_and_keeps_earlier_checkpoints(tiny_disk):
    mgr = ckpt.CheckpointManager(tiny_disk / "ck")
    mgr.save(1, {"w": torch.ones(100)})
    with pytest.raises(OSError, match="no space left on device") as info:
        mgr.save(2, {"w": torch.ones(1_000_000)})
    assert info.value.errno == errno.ENOSPC and "step_000000002" in str(info.value)
    assert [p.name for p in mgr.all()] == ["step_000000001"]
    ckpt.verify(mgr.path(1))
    assert not [p for p in (tiny_disk / "ck").iterdir() if p.name.startswith(".tmp")]


# --- 14 (checkpoint): crafted files and bad steps -----------------------------------------


def _rehash(path: Path) -> None:
    """Recompute the manifest's checksums after an edit (as an attacker would)."""
    mf = json.loads((path / "manifest.json").read_text())
    for name in mf["files"]:
        data = (path / name).read_bytes()
        mf["files"][name] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    (path / "manifest.json").write_text(json.dumps(mf))


def test_dangling_tensor_reference_in_meta_is_a_checkpoint_error(tmp_path):
    p = ckpt.save(tmp_path / "c", {"w": torch.ones(2)}, meta={"epoch": 1})
    (p / "meta.json").write_text(json.dumps({"epoch": {"__functrain_tensor__": "meta['zzz']"}}))
    _rehash(p)
    with pytest.raises(ckpt.CheckpointError, match=r"meta\['zzz'\]"):
        ckpt.load_meta(p)


def test_data_file_that_is_a_raw_pickle_is_a_checkpoint_error(tmp_path):
    import pickle

    p = ckpt.save(tmp_path / "c", {"w": torch.ones(2)})
    data = next(f for f in p.iterdir() if f.suffix == ".distcp")
    data.write_bytes(pickle.dumps({"w": [1.0, 1.0]}))
    _rehash(p)
    with pytest.raises(ckpt.CheckpointError, match=r"distcp|state\['w'\]"):
        ckpt.restore(p, like={"w": torch.zeros(2)})


@pytest.mark.parametrize("bad", ["12", True, 5.9, None])
def test_checkpoint_manager_save_refuses_a_step_that_is_not_an_int(tmp_path, bad):
    mgr = ckpt.CheckpointManager(tmp_path)
    with pytest.raises(TypeError, match="step: expected an int"):
        mgr.save(bad, {"w": torch.ones(1)})
    assert mgr.all() == []


def test_checkpoint_manager_save_accepts_a_0d_integer_tensor(tmp_path):
    mgr = ckpt.CheckpointManager(tmp_path)
    assert mgr.save(torch.tensor(7), {"w": torch.ones(1)}).name == "step_000000007"
    with pytest.raises(TypeError, match="step: expected an int"):
        mgr.save(torch.tensor(7.0), {"w": torch.ones(1)})


# --- 9: EarlyStopping compares in float32, as Lightning does -------------------------------


def lightning_reference(values, mode="min", patience=3, min_delta=0.0, stopping_threshold=None,
                        divergence_threshold=None, check_finite=True):
    """Lightning's EarlyStopping._evaluate_stopping_criteria (2.x), rewritten with its tensor
    arithmetic: the monitored value is a float32 tensor, thresholds and min_delta Python floats.
    Returns the index of the check that stops, or None."""
    op = torch.lt if mode == "min" else torch.gt
    delta = min_delta * (1 if mode == "max" else -1)
    best = torch.tensor(torch.inf) if mode == "min" else -torch.tensor(torch.inf)
    wait = 0
    for i, v in enumerate(values):
        current = torch.tensor(v, dtype=torch.float32)
        if check_finite and not torch.isfinite(current):
            return i
        if stopping_threshold is not None and op(current, stopping_threshold):
            return i
        if divergence_threshold is not None and op(-current, -divergence_threshold):
            return i
        if op(current - delta, best):
            best, wait = current, 0
        else:
            wait += 1
            if wait >= patience:
                return i
    return None


def early_stopping_stop_index(values, **kwargs):
    monitor = "val/acc" if kwargs.get("mode") == "max" else "val/loss"
    es = EarlyStopping(monitor, **kwargs)
    loop = ft.Loop(state=None, step=0, epoch=0)
    for i, v in enumerate(values):
        loop.step = i
        # what fit hands callbacks: the float32 metric read back as a Python float
        es.on_eval(loop, {monitor: float(torch.tensor(v, dtype=torch.float32))})
        if loop.stop_reason:
            return i
    return None


@pytest.mark.parametrize("values, kwargs", [
    ([1.0, 0.9, 0.9, 0.9], dict(min_delta=0.1, patience=1)),           # the issue's case
    ([1.0, 0.9, 0.8, 0.7], dict(min_delta=0.1, patience=1)),
    ([0.5, 0.7, 0.8, 0.9], dict(mode="max", min_delta=0.1, patience=1)),
    ([0.5, 0.8, 0.9], dict(mode="max", stopping_threshold=0.8)),
    ([0.9, 0.7, 0.6], dict(stopping_threshold=0.7)),
    ([0.5, 0.7, 0.6], dict(divergence_threshold=0.7)),
    ([0.9, 0.8, 0.3], dict(mode="max", divergence_threshold=0.3)),
    ([0.3, 0.2, 0.1, 0.2, 0.3], dict(min_delta=0.1, patience=2)),
])
def test_early_stopping_agrees_with_lightning_check_for_check(values, kwargs):
    assert early_stopping_stop_index(values, **kwargs) == lightning_reference(values, **kwargs)


def test_early_stopping_issue_case_stops_at_epoch_1():
    assert early_stopping_stop_index([1.0, 0.9, 0.9, 0.9], min_delta=0.1, patience=1) == 1


def test_early_stopping_agrees_with_lightning_on_decimal_sequences():
    hypothesis = pytest.importorskip("hypothesis")
    st = hypothesis.strategies
    decimals = st.integers(0, 20).map(lambda i: i / 10)

    @hypothesis.settings(max_examples=300, deadline=None)
    @hypothesis.given(values=st.lists(decimals, min_size=1, max_size=8),
                      mode=st.sampled_from(["min", "max"]), patience=st.integers(0, 3),
                      min_delta=st.sampled_from([0.0, 0.1, 0.2, -0.1]),
                      stop=st.one_of(st.none(), decimals), div=st.one_of(st.none(), decimals))
    def check(values, mode, patience, min_delta, stop, div):
        kwargs = dict(mode=mode, patience=patience, min_delta=min_delta,
                      stopping_threshold=stop, divergence_threshold=div)
        assert early_stopping_stop_index(values, **kwargs) == lightning_reference(values,
                                                                                  **kwargs)

    check()


# --- 12: failing fits leak no threads ------------------------------------------------------


class FailAtStart(ft.Callback):
    def on_run_start(self, loop):
        raise RuntimeError("callback failed at start")


def test_fit_failing_early_leaks_no_threads(tmp_path):
    pytest.importorskip("torch.utils.tensorboard")
    data = make_data()
    before = threading.active_count()
    for i in range(4):
        with pytest.raises(RuntimeError, match="callback failed at start"):
            fit(step, make_state(), data, epochs=1, run_dir=tmp_path / f"a{i}",
                   callbacks=[FailAtStart()], **QUIET)
        with pytest.raises(FileNotFoundError):
            fit(step, make_state(), data, epochs=1, run_dir=tmp_path / f"b{i}",
                   resume=tmp_path / "no-such-checkpoint", **QUIET)
    assert threading.active_count() == before


# --- 13: stops are distinguishable from success ----------------------------------------------


STOP_SCRIPT = textwrap.dedent("""
    import os, signal, sys, torch
    import functrain as ft
    from torch import nn

    run_dir, mode = sys.argv[1], sys.argv[2]
    torch.manual_seed(0)

    def step(state, batch):
        x, y = batch
        def loss_fn(params):
            out, _ = ft.call(state.module, params, state.buffers, x)
            return ((out - y) ** 2).mean()
        grads, loss = torch.func.grad_and_value(loss_fn)(state.params)
        return state.apply_gradients(grads), {"loss": loss}

    class Signal(ft.Callback):
        def on_log(self, loop, metrics):
            if loop.step == 3:
                os.kill(os.getpid(), signal.SIGTERM if mode.startswith("term") else signal.SIGINT)
                if mode == "int2":  # a second Ctrl-C before the run has stopped
                    os.kill(os.getpid(), signal.SIGINT)

    data = [(torch.randn(4, 3), torch.randn(4, 1)) for _ in range(8)]
    def run():
        return ft.fit(step, ft.TrainState.create(nn.Linear(3, 1), ft.optim.sgd(0.1)), data,
                      epochs=3, run_dir=run_dir, compile="eager",
                      callbacks=[Signal(), ft.Logging(every=1, progress=False, summary=False),
                                 ft.Checkpointing(every=100)])

    if mode == "term-optout":  # the opt-out: catch Preempted, take its state
        try:
            state = run()
        except ft.Preempted as e:
            state = e.state
    else:
        state = run()
    print("RETURNED", int(state.step), state.stop_reason, flush=True)
""")


def _stop_run(tmp_path, mode):
    script = tmp_path / "stop.py"
    script.write_text(STOP_SCRIPT)
    return subprocess.run([sys.executable, str(script), str(tmp_path / "run"), mode],
                          env={**os.environ, "PYTHONPATH": ROOT}, capture_output=True,
                          text=True, timeout=300)


def test_sigterm_exits_143_after_the_checkpoint_is_safe(tmp_path):
    out = _stop_run(tmp_path, "term")
    assert out.returncode == 143, (out.returncode, out.stderr[-2000:])
    assert "RETURNED" not in out.stdout
    latest = ckpt.CheckpointManager(tmp_path / "run" / "checkpoints").latest()
    assert latest is not None and latest.name == "step_000000003"


def test_sigterm_opt_out_returns_normally(tmp_path):
    out = _stop_run(tmp_path, "term-optout")
    assert out.returncode == 0, out.stderr[-2000:]
    assert "RETURNED 3 received SIGTERM" in out.stdout


def test_second_ctrl_c_raises_keyboard_interrupt_at_once(tmp_path):
    out = _stop_run(tmp_path, "int2")
    assert out.returncode != 0 and "KeyboardInterrupt" in out.stderr, out.stderr[-2000:]
    assert "RETURNED" not in out.stdout
    latest = ckpt.CheckpointManager(tmp_path / "run" / "checkpoints").latest()
    if latest is not None:  # the last complete checkpoint, if any, is intact
        ckpt.verify(latest)


# --- 14 (fit): arguments that were silently accepted --------------------------------------


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(run_dir=""), ValueError, "run_dir"),
    (dict(resume=True, run_dir="r"), (TypeError, ValueError), "resume"),
    (dict(loggers=["jsonl"]), TypeError, r"loggers\[0\]"),
    (dict(callbacks=ft.Callback()), TypeError, "callbacks"),
    (dict(eval_every=2), ValueError, "eval_every"),
    (dict(callbacks=[EarlyStopping("val/loss")]), ValueError, "EarlyStopping"),
    (dict(device="mps"), (RuntimeError, ValueError), r"device='mps'.*HINT"),
])
def test_fit_refuses_arguments_it_would_ignore_or_mangle(tmp_path, monkeypatch, kwargs, error,
                                                         match):
    monkeypatch.chdir(tmp_path)
    if kwargs.get("device") == "mps" and torch.backends.mps.is_available():
        pytest.skip("this machine has MPS")
    with pytest.raises(error, match=match):
        fit(step, make_state(), make_data(), epochs=1, **{"loggers": False, **QUIET,
                                                            **kwargs})


def test_train_state_create_on_a_missing_backend_says_so():
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises((RuntimeError, ValueError), match=r"device='cuda'.*HINT"):
        ft.TrainState.create(nn.Linear(2, 2), ft.optim.sgd(0.1), device="cuda")


# --- 6 and 7: corrupt checkpoints and rollbacks ---------------------------------------------


def _corrupt(path: Path) -> None:
    data = next(f for f in path.iterdir() if f.suffix == ".distcp")
    data.write_bytes(data.read_bytes()[:-3] + b"xyz")


def test_resume_auto_with_every_checkpoint_corrupt_refuses_and_deletes_nothing(tmp_path):
    data = make_data(4)
    fit(step, make_state(), data, epochs=2, checkpoint_every=2, keep=None, run_dir=tmp_path,
           loggers=False, **QUIET)
    dirs = ckpt.CheckpointManager(tmp_path / "checkpoints").all()
    assert len(dirs) == 4
    for p in dirs:
        _corrupt(p)
    before = snapshot(tmp_path / "checkpoints")
    with pytest.raises(ckpt.CheckpointError) as info, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit(step, make_state(), data, epochs=4, checkpoint_every=2, keep=1,
               run_dir=tmp_path, resume="auto", loggers=False, **QUIET)
    for p in dirs:
        assert p.name in str(info.value)  # lists every checkpoint found...
    assert "SHA-256" in str(info.value)  # ...why each was rejected...
    assert "resume=None" in str(info.value)  # ...and what to do
    assert snapshot(tmp_path / "checkpoints") == before


def test_fresh_run_never_deletes_checkpoints_it_did_not_write(tmp_path):
    data = make_data(4)
    fit(step, make_state(), data, epochs=2, checkpoint_every=2, keep=None, run_dir=tmp_path,
           loggers=False, **QUIET)
    manifests = {hashlib.sha256(p.read_bytes()).hexdigest()
                 for p in (tmp_path / "checkpoints").glob("step_*/manifest.json")}
    fit(step, make_state(seed=1), data, epochs=1, checkpoint_every=1, keep=1,
           run_dir=tmp_path, resume=None, loggers=False, **QUIET)
    after = {hashlib.sha256(p.read_bytes()).hexdigest()
             for p in (tmp_path / "checkpoints").rglob("manifest.json")}
    assert manifests <= after  # moved aside perhaps, never deleted


class CrashAt(ft.Callback):
    def __init__(self, at):
        self.at = at

    def on_log(self, loop, metrics):
        if loop.step == self.at:
            raise RuntimeError(f"crash at {self.at}")


class StartStep(ft.Callback):
    def on_run_start(self, loop):
        self.step = loop.step


def test_rollback_then_crash_resumes_the_new_branch(tmp_path):
    data = make_data(4)
    common = dict(run_dir=tmp_path, log_every=1, loggers=False, keep=None, **QUIET)
    fit(step, make_state(), data, max_steps=12, checkpoint_every=4, **common)
    mgr = ckpt.CheckpointManager(tmp_path / "checkpoints")
    assert [p.name[-2:] for p in mgr.all()] == ["04", "08", "12"]
    old_12 = snapshot(mgr.path(12))
    with pytest.raises(RuntimeError, match="crash at 7"):  # rollback to 4, new branch, crash
        fit(step, make_state(lr=0.01), data, max_steps=12, checkpoint_every=2,
               resume=mgr.path(4), callbacks=[CrashAt(7)], **common)
    start = StartStep()
    fit(step, make_state(lr=0.01), data, max_steps=12, checkpoint_every=2, resume="auto",
           callbacks=[start], **common)
    assert start.step == 6  # the newest checkpoint of the new branch, not the old 12
    assert any(snapshot(p.parent) == old_12 for p in (tmp_path / "checkpoints").rglob(
        "manifest.json") if p.parent.name == "step_000000012")  # the old branch is kept aside


# --- 8: frozen parameters stay frozen ----------------------------------------------------


def test_requires_grad_false_parameters_stay_frozen():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 1))
    model[0].requires_grad_(False)
    frozen = {k: v.detach().clone() for k, v in model.state_dict().items() if k.startswith("0.")}
    state = ft.TrainState.create(model, ft.optim.adamw(0.1, weight_decay=0.1))

    def readme_step(state, batch):  # the README's step, unchanged
        x, y = batch

        def loss_fn(params):
            out, _ = ft.call(model, params, state.buffers, x)
            return ((out - y) ** 2).mean()

        grads, loss = torch.func.grad_and_value(loss_fn)(state.params)
        return state.apply_gradients(grads), {"loss": loss}

    start = {k: v.clone() for k, v in state.params.items() if k.startswith("2.")}
    state = fit(readme_step, state, make_data(), epochs=2, loggers=False, **QUIET)
    assert set(frozen) <= set(state.buffers) and not set(frozen) & set(state.params)
    for k, v in frozen.items():
        assert torch.equal(state.buffers[k], v), k
    assert not all(torch.equal(state.params[k], v) for k, v in start.items())


# --- 10: the skip warning says what happened ------------------------------------------------


def nan_metric_step(state, batch):
    new_state, metrics = step(state, batch)
    return new_state, {**metrics, "ratio": torch.tensor(0.0) / torch.tensor(0.0)}


def test_skip_warning_for_a_nonfinite_metric_does_not_claim_a_skipped_update():
    state = make_state()
    w0 = state.params["weight"].clone()
    with pytest.warns(UserWarning) as record:
        state = fit(nan_metric_step, state, make_data(), epochs=1, log_every=4,
                       on_nonfinite="skip", loggers=False, **QUIET)
    texts = [str(r.message) for r in record if "non-finite" in str(r.message)]
    assert texts and not any("skipped the update" in t for t in texts), texts
    assert any("ratio" in t and "applied" in t for t in texts), texts
    assert not torch.equal(state.params["weight"], w0)  # the updates were applied


def test_skip_warning_for_nonfinite_gradients_says_the_update_was_skipped():
    with pytest.warns(UserWarning, match="skipped"):
        state = fit(step, make_state(), make_data(4, bad=1), epochs=1, log_every=4,
                       on_nonfinite="skip", loggers=False, **QUIET)
    assert finite(state)


# --- 5: every unexpected new batch shape is reported --------------------------------------


@pytest.fixture
def cheap_compile(monkeypatch):
    """Dynamo as usual, but each graph runs eagerly (no inductor): counts compiles."""
    from functrain import _runner

    def compile_graph(self, gm, example_inputs):
        self.compiles += 1
        return gm.forward

    monkeypatch.setattr(_runner.CompiledStep, "_compile_graph", compile_graph)


def shapes_data(sizes):
    return [(torch.randn(n, 3), torch.randn(n, 1)) for n in sizes]


def test_second_smaller_batch_shape_raises_under_on_recompile_raise(cheap_compile):
    with pytest.raises(ft.RecompileError, match=r"\(6, 3\)"):
        fit(step, make_state(), shapes_data([8, 8, 7, 6]), epochs=1, on_recompile="raise",
               loggers=False, progress=False, summary=False, compile="inductor")


def test_same_smaller_last_batch_every_epoch_is_not_reported(cheap_compile):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fit(step, make_state(), shapes_data([8, 8, 5]), epochs=3, on_recompile="raise",
               loggers=False, progress=False, summary=False, compile="inductor")


def test_every_new_shape_is_reported_before_torchs_recompile_limit(cheap_compile):
    sizes = [16] + list(range(15, 1, -1))  # 14 smaller shapes: far past torch's limit of 8
    with pytest.warns(UserWarning) as record:
        with pytest.raises(ft.RecompileError, match="recompile"):
            fit(step, make_state(), shapes_data(sizes), epochs=1, on_recompile="warn",
                   loggers=False, progress=False, summary=False, compile="inductor")
    reported = [r for r in record if "recompiled" in str(r.message)]
    assert len(reported) >= 5  # shapes after the one allowed smaller batch, until the limit


def test_latest_strict_lists_every_rejected_checkpoint_and_deletes_nothing(tmp_path):
    mgr = ckpt.CheckpointManager(tmp_path, keep=None)
    for s in (2, 4):
        mgr.save(s, {"w": torch.ones(3)})
    _corrupt(mgr.path(2))
    (mgr.path(4) / "manifest.json").unlink()
    before = snapshot(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert mgr.latest() is None  # not strict: as before
        with pytest.raises(ckpt.CheckpointError) as info:
            mgr.latest(strict=True)
    text = str(info.value)
    assert "step_000000002" in text and "SHA-256" in text
    assert "step_000000004" in text and "manifest" in text
    assert "nothing was deleted" in text
    assert snapshot(tmp_path) == before
    assert ckpt.CheckpointManager(tmp_path / "empty").latest(strict=True) is None


def test_set_aside_moves_newer_checkpoints_untouched(tmp_path):
    mgr = ckpt.CheckpointManager(tmp_path, keep=2)
    for s in (1, 2, 3):
        mgr.save(s, {"w": torch.full((2,), float(s))})
    before = snapshot(mgr.path(3))
    aside = mgr.set_aside(1, "rolled back to step 1")
    assert mgr.all() == []  # step 1 was evicted by keep=2; 2 and 3 are aside
    assert sorted(p.name for p in aside.iterdir()) == ["README", "step_000000002",
                                                       "step_000000003"]
    assert snapshot(aside / "step_000000003") == before
    assert "rolled back to step 1" in (aside / "README").read_text()
    mgr.save(4, {"w": torch.ones(2)})  # new saves and evictions leave the aside folder alone
    mgr.save(5, {"w": torch.ones(2)})
    mgr.save(6, {"w": torch.ones(2)})
    assert [p.name for p in mgr.all()] == ["step_000000005", "step_000000006"]
    assert snapshot(aside / "step_000000003") == before
    assert mgr.set_aside(10, "nothing newer") is None


def test_float32_rounding_of_early_stopping_matches_torch():
    from functrain.callbacks._early_stopping import _f32

    for x in [0.1, 0.7, 0.9 + 0.1, 1e-45, 3.4028235677973366e38, 3.402823669209385e38, 1e39,
              -1e39, float("inf"), -0.0, 2.0**-149 * 1.5]:
        assert _f32(x) == float(torch.tensor(x, dtype=torch.float32)), x
    assert math.isnan(_f32(float("nan")))


class StopAt(ft.Callback):
    def on_log(self, loop, metrics):
        if loop.step == 2:
            loop.request_stop("enough at step 2")


def test_returned_state_says_why_the_run_stopped():
    done = fit(step, make_state(), make_data(), epochs=1, loggers=False, **QUIET)
    assert done.stop_reason is None and int(done.step) == 4
    stopped = fit(step, make_state(), make_data(), epochs=1, log_every=1, loggers=False,
                     callbacks=[StopAt()], **QUIET)
    assert stopped.stop_reason == "enough at step 2" and int(stopped.step) == 2
    assert stopped.replace(step=stopped.step).stop_reason is None  # not part of the pytree
    nan = fit(step, make_state(), make_data(4, bad=1), epochs=1, log_every=1,
                 on_nonfinite="stop", loggers=False, **QUIET)
    assert "non-finite values at step 2" in nan.stop_reason
