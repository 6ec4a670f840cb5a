"""Checkpoints: exact roundtrips, atomic writes, corruption, bad input, async saving, eviction."""

from __future__ import annotations

import json
import os
import pickle
import re
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

import functrain as ft
from functrain import checkpoint as ckpt
from functrain.checkpoint import _dcp, _save, _unpickler

# DCP says so on every single-process save; functrain hides it on the main thread only.
pytestmark = pytest.mark.filterwarnings("ignore:torch.distributed is disabled")


def make_state(seed: int = 0, in_features: int = 5) -> ft.TrainState:
    """A small TrainState with AdamW moments, BatchNorm buffers, a loss scale and bf16 extras,
    trained for two steps so that nothing is at its initial value."""
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(in_features, 8), torch.nn.BatchNorm1d(8),
                                torch.nn.Linear(8, 3))
    state = ft.TrainState.create(model, ft.optim.adamw(1e-2), seed=seed,
                                 loss_scale=torch.tensor(2.0**15), skipped=2)
    state = state.replace(extras={**state.extras,
                                  "ema": ft.tree.cast(state.params, torch.bfloat16),
                                  "odd": torch.tensor([float("nan"), -0.0, float("inf")])})
    for _ in range(2):
        state = train_step(state, torch.randn(16, in_features))
    return state


def train_step(state: ft.TrainState, x: torch.Tensor) -> ft.TrainState:
    def loss_fn(params):
        out, buffers = ft.call(state.module, params, state.buffers, x, train=True)
        return (out ** 2).mean(), buffers

    grads, buffers = torch.func.grad(loss_fn, has_aux=True)(state.params)
    return state.apply_gradients(grads, buffers=buffers)


def copy_tree(tree):
    return ft.tree.map(lambda x: x.clone() if isinstance(x, torch.Tensor) else x, tree)


def bits(t: torch.Tensor) -> bytes:
    return t.detach().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


def assert_identical(a, b) -> None:
    """Same structure, and every tensor leaf with the same dtype, shape and bits."""
    a_leaves, b_leaves = ft.tree.leaves_with_path(a, "state"), ft.tree.leaves_with_path(b, "state")
    assert [p for p, _ in a_leaves] == [p for p, _ in b_leaves]
    for (p, x), (_, y) in zip(a_leaves, b_leaves, strict=True):
        assert type(x) is type(y), p
        if isinstance(x, torch.Tensor):
            assert x.dtype == y.dtype and x.shape == y.shape and bits(x) == bits(y), p
        else:
            assert x == y, p


# --- roundtrips --------------------------------------------------------------------------


def test_roundtrip_is_bit_identical_and_resumes_exactly(tmp_path):
    state = make_state()
    kinds = {str(t.dtype) for t in ft.tree.leaves(state) if isinstance(t, torch.Tensor)}
    assert {"torch.int64", "torch.float32", "torch.bfloat16"} <= kinds
    assert state.step.dtype == torch.int64 and state.extras["loss_scale"].dim() == 0
    assert int(state.buffers["1.num_batches_tracked"]) == 2

    ckpt.save(tmp_path / "c", state)
    like = make_state(seed=1)  # another state of the same layout; must not be modified
    like_before = copy_tree(like)
    back = ckpt.restore(tmp_path / "c", like=like)

    assert_identical(state, back)
    assert_identical(like_before, like)
    assert back.tx is like.tx and back.module is like.module and back.extras["skipped"] == 2
    # exact resume: one more step from the original and from the restored state agree
    x = torch.randn(16, 5)
    assert_identical(train_step(state, x), train_step(back, x))


def test_roundtrip_through_dcps_own_reader(tmp_path, monkeypatch):
    """Without the fast path (checkpoints written in shards, or another torch), functrain
    reads through DCP's FileSystemReader, which copies into preallocated tensors."""
    state = make_state()
    ckpt.save(tmp_path / "c", state, meta={"window": torch.arange(3)})
    assert _dcp._whole_tensors(_unpickler._read_dcp_metadata(tmp_path / "c" / ".metadata"), [])
    monkeypatch.setattr(_dcp, "_whole_tensors", lambda md, keys: False)
    assert_identical(state, ckpt.restore(tmp_path / "c", like=make_state(seed=1)))
    assert torch.equal(ckpt.load_meta(tmp_path / "c")["window"], torch.arange(3))


def test_large_states_are_written_in_several_files(tmp_path, monkeypatch):
    monkeypatch.setattr(_dcp, "_PARALLEL_BYTES", 0)
    monkeypatch.setattr(os, "cpu_count", lambda: 3)
    state = make_state()
    path = ckpt.save(tmp_path / "c", state, meta={"window": torch.arange(3)})
    data = sorted(p.name for p in path.glob("*.distcp"))
    assert data == ["__0_0.distcp", "__0_1.distcp", "__0_2.distcp"]
    assert_identical(state, ckpt.restore(path, like=make_state(seed=1)))
    assert torch.equal(ckpt.load_meta(path)["window"], torch.arange(3))
    (path / "__0_1.distcp").write_bytes(b"")
    with pytest.raises(ckpt.CheckpointError, match="'__0_1.distcp' of"):
        ckpt.restore(path, like=state)


def test_manifest_lists_leaves_files_and_versions(tmp_path):
    state = make_state()
    ckpt.save(tmp_path / "c", state)
    manifest = json.loads((tmp_path / "c" / "manifest.json").read_text())
    assert manifest["format_version"] == ckpt.FORMAT_VERSION
    assert manifest["functrain_version"] == ft.__version__
    leaves = {leaf["path"]: leaf for leaf in manifest["leaves"]}
    assert leaves["state.params['0.weight']"] == {
        "path": "state.params['0.weight']", "shape": [8, 5], "dtype": "float32"}
    assert leaves["state.extras['ema']['2.bias']"]["dtype"] == "bfloat16"
    assert leaves["state.extras['skipped']"]["value"] == 2
    assert set(manifest["files"]) == {".metadata", "__0_0.distcp", "meta.json"}
    assert all(len(f["sha256"]) == 64 for f in manifest["files"].values())


def test_meta_roundtrip(tmp_path):
    meta = {
        "epoch": 3, "batch_in_epoch": 117, "data_seed": 1234, "lr": 1e-3, "done": False,
        "name": "run-a", "none": None, "nan": float("nan"), "inf": float("-inf"),
        "windows": {"loss": torch.tensor([0.5, 0.25]), "count": torch.tensor(7)},
        "callbacks": [{"best": 0.91, "patience_left": 2}, {"history": (1, 2)}],
        "bf16": torch.ones(2, dtype=torch.bfloat16),
    }
    ckpt.save(tmp_path / "c", {"w": torch.ones(1)}, meta=meta)
    back = ckpt.load_meta(tmp_path / "c")
    assert back.keys() == meta.keys()
    assert back["windows"]["loss"].dtype == torch.float32
    assert torch.equal(back["windows"]["loss"], meta["windows"]["loss"])
    assert back["windows"]["count"].dtype == torch.int64 and int(back["windows"]["count"]) == 7
    assert back["bf16"].dtype == torch.bfloat16
    assert back["callbacks"] == [{"best": 0.91, "patience_left": 2}, {"history": [1, 2]}]
    assert back["nan"] != back["nan"] and back["inf"] == float("-inf")
    assert {k: back[k] for k in ("epoch", "batch_in_epoch", "data_seed", "lr", "done", "name",
                                 "none")} == {k: meta[k] for k in ("epoch", "batch_in_epoch",
                                              "data_seed", "lr", "done", "name", "none")}
    assert ckpt.load_meta(ckpt.save(tmp_path / "d", {"w": torch.ones(1)})) == {}


@pytest.mark.parametrize("meta, where", [
    ({"a": {1, 2}}, "meta['a']: expected a JSON value"),
    ({"a": {1: 2}}, "meta['a']: expected str keys"),
    ({"cb": [object()]}, "meta['cb'][0]: expected a JSON value"),
    ([1, 2], "meta: expected a dict"),
])
def test_meta_rejects_values_json_cannot_hold(tmp_path, meta, where):
    with pytest.raises(TypeError, match=re.escape(where)):
        ckpt.save(tmp_path / "c", {"w": torch.ones(1)}, meta=meta)
    assert not any(tmp_path.iterdir())  # nothing written


def test_state_leaf_that_cannot_be_stored_is_named(tmp_path):
    with pytest.raises(TypeError, match=r"state\['opt'\]: expected a tensor or a JSON scalar"):
        ckpt.save(tmp_path / "c", {"w": torch.ones(1), "opt": object()})


def test_restore_like_on_meta_device_loads_to_cpu(tmp_path):
    ckpt.save(tmp_path / "c", {"w": torch.arange(3.0)})
    back = ckpt.restore(tmp_path / "c", like={"w": torch.empty(3, device="meta")})
    assert back["w"].device.type == "cpu" and torch.equal(back["w"], torch.arange(3.0))


def test_overwrite(tmp_path):
    ckpt.save(tmp_path / "c", {"w": torch.ones(2)})
    with pytest.raises(FileExistsError, match="overwrite=True"):
        ckpt.save(tmp_path / "c", {"w": torch.zeros(2)})
    ckpt.save(tmp_path / "c", {"w": torch.zeros(2)}, overwrite=True)
    assert torch.equal(ckpt.restore(tmp_path / "c", {"w": torch.ones(2)})["w"], torch.zeros(2))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c"]


# --- atomicity and corruption --------------------------------------------------------------


def small(v: float) -> dict:
    return {"w": torch.full((4,), v), "step": torch.tensor(int(v))}


def test_crash_mid_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    from torch.distributed.checkpoint import filesystem

    mgr = ckpt.CheckpointManager(tmp_path, keep=3)
    mgr.save(1, small(1.0))
    written = []

    def crash(self, metadata, results):  # data files are on disk; .metadata is not
        written.extend(sorted(p.name for p in Path(self.path).iterdir()))
        raise RuntimeError("simulated crash")

    monkeypatch.setattr(filesystem._FileSystemWriter, "finish", crash)
    with pytest.raises(RuntimeError, match="simulated crash"):
        mgr.save(2, small(2.0))
    assert written == ["__0_0.distcp"]
    monkeypatch.undo()

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert mgr.latest() == mgr.path(1)
    assert [p.name for p in tmp_path.iterdir()] == ["step_000000001"]  # tmp dir removed
    assert torch.equal(ckpt.restore(mgr.latest(), small(0.0))["w"], small(1.0)["w"])


def test_crash_before_manifest_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    mgr = ckpt.CheckpointManager(tmp_path, keep=1)
    mgr.save(1, small(1.0))
    real = _save._write_json

    def crash(path, obj):
        if path.name == "manifest.json":
            raise OSError("disk full")
        real(path, obj)

    monkeypatch.setattr(_save, "_write_json", crash)
    with pytest.raises(OSError, match="disk full"):
        mgr.save(2, small(2.0))
    monkeypatch.undo()
    assert [p.name for p in tmp_path.iterdir()] == ["step_000000001"]  # keep=1 evicted nothing
    assert mgr.latest() == mgr.path(1)


def dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_leftovers_of_a_killed_save_are_ignored_then_cleaned(tmp_path):
    mgr = ckpt.CheckpointManager(tmp_path, keep=3)
    mgr.save(1, small(1.0))
    pid = dead_pid()
    partial = tmp_path / f".tmp-step_000000002-{pid}"  # killed while writing the data
    partial.mkdir()
    (partial / "__0_0.distcp").write_bytes(b"\0" * 10)
    complete = tmp_path / f".tmp-step_000000003-{pid}"  # killed between the renames
    shutil.copytree(mgr.path(1), complete)
    alive = tmp_path / f".tmp-step_000000004-{os.getpid()}"  # a save in progress elsewhere
    alive.mkdir()

    assert mgr.all() == [mgr.path(1)] and mgr.latest() == mgr.path(1)
    mgr2 = ckpt.CheckpointManager(tmp_path, keep=3)
    assert not partial.exists() and not complete.exists() and alive.exists()
    assert mgr2.all() == [mgr.path(1), mgr.path(3)]  # the complete one moved into place


KILLED_MID_SAVE = """
import os, signal, sys, torch
from functrain import checkpoint as ckpt
from functrain.checkpoint import _save
mgr = ckpt.CheckpointManager(sys.argv[1], keep=1)
mgr.save(1, {"w": torch.ones(1000)})
real = _save._write_json
def die(path, obj):
    if path.name == "manifest.json":  # data, .metadata and meta.json are on disk
        os.kill(os.getpid(), signal.SIGKILL)  # no except/finally runs
    real(path, obj)
_save._write_json = die
mgr.save(2, {"w": torch.zeros(1000)})
"""


def test_process_killed_mid_save(tmp_path):
    proc = subprocess.run([sys.executable, "-c", KILLED_MID_SAVE, str(tmp_path)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == -9, proc.stderr
    leftover = [p.name for p in tmp_path.iterdir() if p.name.startswith(".tmp-step_000000002-")]
    assert len(leftover) == 1
    mgr = ckpt.CheckpointManager(tmp_path, keep=1)  # the killed process is gone: cleaned up
    assert [p.name for p in tmp_path.iterdir()] == ["step_000000001"]
    assert torch.equal(ckpt.restore(mgr.latest(), {"w": torch.zeros(1000)})["w"],
                       torch.ones(1000))


def test_corrupt_checkpoint_is_rejected_and_latest_falls_back(tmp_path):
    mgr = ckpt.CheckpointManager(tmp_path, keep=3)
    for step in (1, 2, 3):
        mgr.save(step, small(float(step)))
    data3 = mgr.path(3) / "__0_0.distcp"
    data3.write_bytes(data3.read_bytes()[:-7])  # truncated
    data2 = mgr.path(2) / "__0_0.distcp"
    raw = bytearray(data2.read_bytes())
    raw[len(raw) // 2] ^= 0xFF  # same size, one flipped byte
    data2.write_bytes(bytes(raw))

    with pytest.raises(ckpt.CheckpointError, match=r"expected '__0_0.distcp' of \d+ bytes, "
                       r"got \d+\. HINT: the file is truncated"):
        ckpt.restore(mgr.path(3), small(0.0))
    with pytest.raises(ckpt.CheckpointError, match="SHA-256"):
        ckpt.restore(mgr.path(2), small(0.0))
    with pytest.warns(UserWarning) as record:
        assert mgr.latest() == mgr.path(1)
    messages = [str(w.message) for w in record]
    assert len(messages) == 2
    assert "step_000000003" in messages[0] and "truncated" in messages[0]
    assert "step_000000002" in messages[1] and "SHA-256" in messages[1]


def test_checkpoint_without_manifest_is_skipped_with_a_warning(tmp_path):
    mgr = ckpt.CheckpointManager(tmp_path)
    mgr.save(1, small(1.0))
    shutil.copytree(mgr.path(1), mgr.path(2))
    (mgr.path(2) / "manifest.json").unlink()
    with pytest.warns(UserWarning, match=r"step_000000002.*without functrain's manifest\.json"):
        assert mgr.latest() == mgr.path(1)
    assert mgr.all() == [mgr.path(1)]


# --- bad input -------------------------------------------------------------------------------


def test_restore_into_another_model_names_the_leaf(tmp_path):
    ckpt.save(tmp_path / "c", ft.TrainState.create(torch.nn.Linear(6, 10), ft.optim.sgd(0.1)))
    like = ft.TrainState.create(torch.nn.Linear(5, 10), ft.optim.sgd(0.1))
    with pytest.raises(ft.tree.TreeMismatchError) as e:
        ckpt.restore(tmp_path / "c", like)
    msg = str(e.value)
    assert msg.startswith("state.params['weight']: expected shape (10, 5) (as in like), got "
                          "(10, 6) in the checkpoint")
    assert "HINT" in msg


def test_restore_with_another_optimizer_or_dtype_names_the_leaf(tmp_path):
    model = torch.nn.Linear(2, 2)
    ckpt.save(tmp_path / "c", ft.TrainState.create(model, ft.optim.sgd(0.1)))
    with pytest.raises(ft.tree.TreeMismatchError, match=r"state\.opt_state\[0\]\.count: "
                       r"expected \(as in like\) a leaf in the checkpoint"):
        ckpt.restore(tmp_path / "c", ft.TrainState.create(model, ft.optim.adamw(0.1)))
    like = ft.TrainState.create(model.to(torch.float64), ft.optim.sgd(0.1))
    with pytest.raises(ft.tree.TreeMismatchError, match=r"state\.params\['bias'\]: expected "
                       r"dtype torch\.float64 \(as in like\), got torch\.float32"):
        ckpt.restore(tmp_path / "c", like)
    ckpt.save(tmp_path / "d", {"a": torch.ones(1), "b": torch.ones(1)})
    with pytest.raises(ft.tree.TreeMismatchError, match=r"state\['b'\]: expected no such leaf "
                       r"\(like has none\), got one in the checkpoint"):
        ckpt.restore(tmp_path / "d", {"a": torch.ones(1)})


def test_missing_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist. HINT"):
        ckpt.restore(tmp_path / "nope", small(0.0))
    with pytest.raises(FileNotFoundError):
        ckpt.load_meta(tmp_path / "nope")


def test_file_of_another_format(tmp_path):
    torch.save(small(1.0), tmp_path / "model.pt")
    with pytest.raises(ckpt.CheckpointError, match=r"expected a checkpoint directory .*got a "
                       r"zip file, probably a torch\.save file\. HINT: .*weights_only=True"):
        ckpt.restore(tmp_path / "model.pt", small(0.0))
    (tmp_path / "junk.bin").write_bytes(os.urandom(1000))
    with pytest.raises(ckpt.CheckpointError, match="a file of unknown format"):
        ckpt.restore(tmp_path / "junk.bin", small(0.0))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ckpt.CheckpointError, match="without manifest.json. HINT"):
        ckpt.restore(tmp_path / "empty", small(0.0))
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "manifest.json").write_text('{"name": "something else"}')
    with pytest.raises(ckpt.CheckpointError, match="not a functrain checkpoint"):
        ckpt.restore(tmp_path / "other", small(0.0))
    (tmp_path / "other" / "manifest.json").write_text("{not json")
    with pytest.raises(ckpt.CheckpointError, match="expected manifest.json to be JSON"):
        ckpt.restore(tmp_path / "other", small(0.0))


def test_newer_format_version(tmp_path):
    path = ckpt.save(tmp_path / "c", small(1.0))
    manifest = json.loads((path / "manifest.json").read_text())
    manifest.update(format_version=999, functrain_version="9.0.0")
    (path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ckpt.CheckpointError, match=r"expected format version <= 1, got 999 "
                       r"\(written by functrain 9\.0\.0\)\. HINT: upgrade functrain"):
        ckpt.restore(path, small(0.0))


class Boom:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def tamper(path: Path, name: str, data: bytes, *, fix_manifest: bool) -> None:
    (path / name).write_bytes(data)
    if fix_manifest:  # as an attacker who can write the directory would
        import hashlib
        manifest = json.loads((path / "manifest.json").read_text())
        manifest["files"][name] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
        (path / "manifest.json").write_text(json.dumps(manifest))


def test_malicious_metadata_is_never_unpickled(tmp_path):
    path = ckpt.save(tmp_path / "c", small(1.0))
    marker = tmp_path / "pwned"
    evil = pickle.dumps(Boom(str(marker)))
    tamper(path, ".metadata", evil, fix_manifest=False)
    with pytest.raises(ckpt.CheckpointError, match="expected '.metadata' of"):
        ckpt.restore(path, small(0.0))
    tamper(path, ".metadata", evil, fix_manifest=True)
    with pytest.raises(ckpt.CheckpointError, match=r"reference to posix\.mkdir; refusing"):
        ckpt.restore(path, small(0.0))
    assert not marker.exists()


def test_manifest_naming_files_outside_the_checkpoint_is_refused(tmp_path):
    path = ckpt.save(tmp_path / "c", small(1.0))
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["files"]["../secret"] = {"bytes": 1, "sha256": "0" * 64}
    (path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ckpt.CheckpointError, match="malformed"):
        ckpt.restore(path, small(0.0))


def test_metadata_pointing_at_pickled_bytes_is_refused(tmp_path):
    """A .metadata made of DCP's own types can still mark an entry as pickled bytes, which
    DCP's default planner would load with torch.load(weights_only=False)."""
    from torch.distributed.checkpoint.metadata import BytesStorageMetadata

    path = ckpt.save(tmp_path / "c", small(1.0))
    md = _unpickler._read_dcp_metadata(path / ".metadata")
    md.state_dict_metadata["state['w']"] = BytesStorageMetadata()
    tamper(path, ".metadata", pickle.dumps(md), fix_manifest=True)
    with pytest.raises(ckpt.CheckpointError, match=r"expected DCP entry \"state\['w'\]\" to be "
                       r"a tensor"):
        ckpt.restore(path, small(0.0))


# --- CheckpointManager -----------------------------------------------------------------------


def test_keep_evicts_oldest_first_only_after_the_new_one_is_written(tmp_path, monkeypatch):
    mgr = ckpt.CheckpointManager(tmp_path, keep=2)
    seen = []
    for step in (100, 200, 300, 400):
        mgr.save(step, small(float(step)), meta={"epoch": step // 100})
        seen.append([p.name for p in mgr.all()])
    assert seen == [["step_000000100"], ["step_000000100", "step_000000200"],
                    ["step_000000200", "step_000000300"], ["step_000000300", "step_000000400"]]
    monkeypatch.setattr(_save, "_dcp_save", lambda *a: (_ for _ in ()).throw(OSError("full")))
    with pytest.raises(OSError):
        mgr.save(500, small(5.0))
    assert [p.name for p in mgr.all()] == ["step_000000300", "step_000000400"]
    monkeypatch.undo()
    mgr.save(torch.tensor(400), small(4.5))  # same step: replaced; a 0-d tensor step works
    assert [p.name for p in mgr.all()] == ["step_000000300", "step_000000400"]
    assert float(ckpt.restore(mgr.latest(), small(0.0))["w"][0]) == 4.5
    assert ckpt.load_meta(mgr.path(300)) == {"epoch": 3}

    everything = ckpt.CheckpointManager(tmp_path / "all", keep=None)
    for step in range(5):
        everything.save(step, small(float(step)))
    assert len(everything.all()) == 5
    with pytest.raises(ValueError, match="keep: expected an int >= 1 or None, got 0"):
        ckpt.CheckpointManager(tmp_path, keep=0)


def test_async_save_equals_sync_and_owns_its_copy(tmp_path):
    state = make_state()
    meta = {"epoch": 1, "window": torch.tensor([1.0, 2.0])}
    sync = ckpt.CheckpointManager(tmp_path / "sync").save(7, state, meta)
    mgr = ckpt.CheckpointManager(tmp_path / "async")
    expected = copy_tree(state)
    path = mgr.save(7, state, meta, blocking=False)
    for t in ft.tree.leaves(state):  # what the runner's in-place write-back would do
        if isinstance(t, torch.Tensor) and t.is_floating_point():
            t.add_(1)
    meta["window"].zero_()
    mgr.wait()
    a, s = ckpt.restore(path, like=expected), ckpt.restore(sync, like=expected)
    assert_identical(expected, a)
    assert_identical(s, a)
    assert torch.equal(ckpt.load_meta(path)["window"], torch.tensor([1.0, 2.0]))
    assert ckpt.load_meta(path)["window"].equal(ckpt.load_meta(sync)["window"])


def test_async_error_is_raised_on_the_next_call(tmp_path, monkeypatch):
    mgr = ckpt.CheckpointManager(tmp_path)
    real = _save._dcp_save

    def fail_for_odd_steps(state_dict, directory):
        if int(directory.name.split("-")[1].removeprefix("step_")) % 2:
            raise OSError("no space left on device")
        real(state_dict, directory)

    monkeypatch.setattr(_save, "_dcp_save", fail_for_odd_steps)
    mgr.save(1, small(1.0), blocking=False)
    with pytest.raises(OSError, match="no space left"):
        mgr.wait()
    mgr.wait()  # reported once
    mgr.save(3, small(3.0), blocking=False)
    with pytest.raises(OSError, match="no space left"):
        mgr.save(4, small(4.0))  # the next save reports the previous failure...
    mgr.save(4, small(4.0))  # ...and works again afterwards
    assert mgr.all() == [mgr.path(4)]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_async_save_validates_in_the_callers_thread(tmp_path):
    mgr = ckpt.CheckpointManager(tmp_path)
    with pytest.raises(TypeError, match=r"meta\['x'\]"):
        mgr.save(1, small(1.0), {"x": object()}, blocking=False)
    mgr.wait()


# --- weights-only export ---------------------------------------------------------------------


def test_export_and_load_params(tmp_path):
    pytest.importorskip("safetensors")
    w = torch.randn(3, 4)
    params = {"emb.weight": w, "head.weight": w, "b": torch.ones(2, dtype=torch.bfloat16),
              "t": torch.randn(4, 3).t()}  # tied and non-contiguous tensors
    path = tmp_path / "sub" / "model.safetensors"
    ckpt.export_weights({"params": params}, path)
    back = ckpt.load_params(path)
    assert list(back) == sorted(back) or set(back) == set(params)
    for k, v in params.items():
        assert back[k].dtype == v.dtype and torch.equal(back[k], v)
    assert [p.name for p in path.parent.iterdir()] == ["model.safetensors"]
    with pytest.raises(ckpt.CheckpointError, match="torch.save"):
        torch.save(params, tmp_path / "x.pt")
        ckpt.load_params(tmp_path / "x.pt")
    with pytest.raises(FileNotFoundError):
        ckpt.load_params(tmp_path / "none.safetensors")
    with pytest.raises(TypeError, match=r"state.params\['x'\]: expected a tensor"):
        ckpt.export_weights({"params": {"x": 1.0}}, tmp_path / "y.safetensors")
    with pytest.warns(DeprecationWarning, match="export_weights"):
        old = ckpt.export_params(tmp_path / "old.safetensors", params)
    assert set(ckpt.load_params(old)) == set(params)
    with pytest.raises(ckpt.CheckpointError, match="load_params"):
        ckpt.restore(path, small(0.0))


def test_export_params_without_safetensors(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "safetensors", None)
    monkeypatch.setitem(sys.modules, "safetensors.torch", None)
    with pytest.raises(ImportError, match="HINT: pip install safetensors"):
        ckpt.export_weights({"params": {"w": torch.ones(1)}}, tmp_path / "m.safetensors")
    with pytest.raises(ImportError, match="HINT: pip install safetensors"):
        ckpt.load_params(tmp_path / "m.safetensors")


def test_public_names_are_documented():
    for name in ckpt.__all__:
        obj = getattr(ckpt, name)
        if callable(obj):
            assert obj.__doc__ and "Example" in obj.__doc__, name
