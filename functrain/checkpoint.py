"""Checkpoints: save a whole train state atomically and resume from it exactly.

`save` writes a pytree (usually a `functrain.TrainState`: step, params, buffers, optimizer
state, RNG key, extras such as a loss scale) plus a ``meta`` dict for the loop's own state
(epoch, position in the epoch, data-order seed, metric windows, callback state). `restore`
reads it back into the structure of a ``like`` state, bit for bit, after checking every leaf's
path, shape and dtype. `CheckpointManager` keeps the last few checkpoints of a run and finds
the newest intact one. `export_params` / `load_params` write and read a single weights-only
safetensors file for inference and sharing.

The tensors go through `torch.distributed.checkpoint` (DCP), the format in which many
processes write the shards of one state and a different number of processes read it back.
Today `save` writes from one process (DCP's ``no_dist=True``, no process group needed; under
an initialized process group call it on one rank only); the distributed runner will pass its
process group instead, with the same files, manifest and `restore`. Each leaf is stored under
its path, e.g. ``state.params['fc.weight']``, so a checkpoint can be inspected and loaded
partially with DCP alone.

Layout of a run directory (``CheckpointManager(run_dir / "checkpoints", keep=3)``)::

    run_dir/checkpoints/
        step_000001000/             one checkpoint (`save` writes this directory)
            manifest.json           written last: format version, versions, leaf paths with
                                    shapes and dtypes (or JSON values), SHA-256 of every file
            meta.json               the ``meta`` dict; its tensors are stored with the data
            .metadata               DCP's index of the data (a pickle, see Safety)
            __0_0.distcp            the tensor data (DCP): one file per writer thread
            __0_1.distcp            (several for states over 64 MiB) and per process
        step_000002000/
        .tmp-step_000003000-4242/   a save in progress (or one that crashed): ignored

Atomicity:
    `save` writes into a sibling ``.tmp-<name>-<pid>`` directory, fsyncs every file, writes
    ``manifest.json`` last, renames the directory into place and fsyncs the parent. A crash
    at any point leaves the previous checkpoint untouched and the new one either complete or
    absent (a leftover ``.tmp-*`` directory is ignored; `CheckpointManager` removes those of
    dead processes). Overwriting an existing checkpoint renames the old one aside first; a
    crash between the two renames leaves both complete, and `CheckpointManager` moves the new
    one into place. `CheckpointManager.latest` skips, with a warning, any checkpoint that has
    no manifest or whose files fail their checksums.

Safety:
    Loading never executes code from the files. DCP's own ``FileSystemReader`` (torch 2.14.1)
    reads ``.metadata`` with plain ``pickle.load``, which runs any code a crafted file asks
    for, and loads non-tensor entries with ``torch.load(weights_only=False)``; only the tensor
    data goes through ``torch.load(weights_only=True)``. functrain therefore (1) reads
    ``.metadata`` with a restricted unpickler that accepts only DCP's metadata classes,
    ``torch.Size``, dtypes, layouts and paths, and rejects anything else before it is called;
    (2) checks that every entry it loads is a tensor entry of the expected shape and dtype and
    that the index points only at files the manifest lists, and uses a load planner that
    refuses byte entries, so ``torch.load(weights_only=False)`` is never reached; tensor data
    is read with ``torch.load(weights_only=True)`` only; (3) checks the size and SHA-256 of
    every file against ``manifest.json`` before DCP opens any of them. The checksums catch
    torn writes, truncation and bit rot; they are not a signature (whoever can rewrite the
    files can rewrite the manifest), which is why (1) and (2) exist. ``meta.json`` and
    ``manifest.json`` are plain JSON.

Cost:
    100M parameters + AdamW moments (1.2 GB float32) on the CPU, page cache warm, medians of 5
    fresh processes, 2 shared cores (load average 1.3-1.9), torch 2.14.1, 2026-11-27
    (``benchmarks/checkpoint.py``; times are functrain vs ``torch.save`` / ``torch.load`` +
    ``load_state_dict`` of the equivalent model and optimizer state dicts):

    ===================================  ============  ==============  ==================
    operation                            functrain     torch           peak extra memory
    ===================================  ============  ==============  ==================
    save                                 2.0 s         1.3 s (1.3 s    16 MB / 0
                                                       with fsync)
    save, ``blocking=False``             0.33 s stall  -               1.16 GB (the copy)
                                         (2.1 s done)
    restore (checksums + read)           1.6 s         0.75 s          1.16 GB / 1.15 GB
    ===================================  ============  ==============  ==================

    Most of the difference is the SHA-256 pass over the files (about 1 GB/s here). The first
    DCP call in a process also imports it (1-2 s).

Example:
    >>> import tempfile, torch, functrain as ft
    >>> state = ft.TrainState.create(torch.nn.Linear(3, 2), ft.optim.adamw(1e-3), seed=0)
    >>> with tempfile.TemporaryDirectory() as d:
    ...     _ = ft.checkpoint.save(f"{d}/ckpt", state, meta={"epoch": 3})
    ...     back = ft.checkpoint.restore(f"{d}/ckpt", like=state)
    ...     meta = ft.checkpoint.load_meta(f"{d}/ckpt")
    >>> torch.equal(back.params["weight"], state.params["weight"]), meta
    (True, {'epoch': 3})
"""

from __future__ import annotations

import atexit
import contextlib
import errno
import hashlib
import io
import json
import os
import pickle
import re
import shutil
import sys
import threading
import time
import traceback
import warnings
import weakref
import zipfile
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import optree
import torch

from . import tree as _tree
from ._errors import check_int, describe
from ._version import __version__

__all__ = [
    "FORMAT_VERSION",
    "CheckpointError",
    "CheckpointManager",
    "export_params",
    "load_meta",
    "load_params",
    "restore",
    "save",
    "verify",
]

FORMAT_VERSION = 1
"""The checkpoint format this version writes; it reads this version and older ones."""

_MANIFEST = "manifest.json"
_META = "meta.json"
_FORMAT = "functrain-checkpoint"
_TENSOR_REF = "__functrain_tensor__"  # a meta.json placeholder for a tensor stored with the data
_JSON_SCALARS = (bool, int, float, str, type(None))


class CheckpointError(ValueError):
    """A checkpoint is incomplete, corrupt, of another format or of a newer format version.

    Example:
        >>> import tempfile, functrain as ft
        >>> with tempfile.TemporaryDirectory() as d:
        ...     try:
        ...         ft.checkpoint.verify(d)
        ...     except ft.checkpoint.CheckpointError as e:
        ...         print("expected a complete functrain checkpoint" in str(e))
        True
    """


# ---------------------------------------------------------------------------------------------
# save


def save(path: str | os.PathLike[str], state: Any, *, meta: Mapping[str, Any] | None = None,
         overwrite: bool = False) -> Path:
    """Write ``state`` (any pytree of tensors) and ``meta`` to the directory ``path``, atomically.

    Args:
        path: the checkpoint directory to create. Its parent is created if needed.
        state: a pytree (usually a `functrain.TrainState`). Tensor leaves are stored with their
            exact bits, dtype and shape; leaves that are JSON scalars (bool, int, float, str,
            None) are stored in the manifest. Static fields (``tx``, ``module``) are code, not
            data: they are not stored and come from ``like`` on `restore`.
        meta: the loop's own state: nested dicts (str keys) and lists of JSON scalars and
            tensors. Tensors are stored with the data and come back on the CPU; tuples come
            back as lists.
        overwrite: replace an existing checkpoint at ``path``.

    Returns:
        ``path`` as a ``Path``.

    Raises:
        FileExistsError: if ``path`` exists and ``overwrite`` is False.
        TypeError: if a leaf of ``state`` or a value in ``meta`` cannot be stored; names it.
        OSError: with ``errno.ENOSPC`` ("no space left on device", naming ``path``) when the
            disk fills up; nothing of the new checkpoint is left, earlier ones are intact.

    Example:
        >>> import tempfile, torch, functrain as ft
        >>> state = ft.TrainState.create(torch.nn.Linear(2, 2), ft.optim.sgd(0.1))
        >>> with tempfile.TemporaryDirectory() as d:
        ...     p = ft.checkpoint.save(f"{d}/step_5", state, meta={"epoch": 1})
        ...     sorted(f.name for f in p.iterdir())
        ['.metadata', '__0_0.distcp', 'manifest.json', 'meta.json']
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(
            f"checkpoint.save: expected a new path, got {str(path)!r}, which exists. HINT: pass "
            "overwrite=True, or use CheckpointManager, which names each checkpoint by its step.")
    tensors, leaves = _flatten_state(state)
    meta_json, meta_tensors = _flatten_meta(_check_meta(meta), "meta")
    manifest: dict[str, Any] = {
        "format": _FORMAT, "format_version": FORMAT_VERSION, "functrain_version": __version__,
        "torch_version": torch.__version__, "leaves": leaves,
        "meta_tensors": [{"path": k, **_spec(t)} for k, t in meta_tensors.items()],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".tmp-{path.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        _dcp_save({**tensors, **meta_tensors}, tmp)
        _write_json(tmp / _META, meta_json)
        files = sorted(tmp.iterdir())
        manifest["files"] = {f.name: {"bytes": f.stat().st_size, "sha256": digest}
                             for f, digest in zip(files, _sha256_all(files), strict=True)}
        _write_json(tmp / _MANIFEST, manifest)  # last: its presence marks a complete write
        _fsync_dir(tmp)
        if path.exists():  # overwrite: move the old one aside first (rename cannot replace it)
            old = path.parent / f".old-{path.name}-{os.getpid()}"
            _remove(old)
            os.rename(path, old)
            os.rename(tmp, path)
            _remove(old)
        else:
            os.rename(tmp, path)
        _fsync_dir(path.parent)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        full = _disk_full(e, path, tensors, meta_tensors)
        if full is not None:
            raise full from e
        raise
    return path


def _disk_full(error: BaseException, path: Path, *tensor_dicts: dict[str, torch.Tensor]
               ) -> OSError | None:
    """The error to raise when ``error`` came from a full disk, else ``None``.

    Python's own writes raise ``OSError(ENOSPC)``; torch's zip writer (under DCP) raises a
    ``RuntimeError`` such as "[enforce fail at inline_container.cc:672] unexpected pos", which
    says nothing about space: that one counts as a full disk when, after the partial write was
    removed, the file system has less room than the checkpoint's tensors need.
    """
    need = sum(t.numel() * t.element_size() for d in tensor_dicts for t in d.values())
    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
        pass
    elif not isinstance(error, RuntimeError):
        return None
    else:
        try:
            free = _free_bytes(path.parent)
        except OSError:
            return None
        if free >= need + (1 << 20):  # room to spare: some other failure
            return None
    try:
        room = f"{_free_bytes(path.parent)} bytes free there"
    except OSError:
        room = "free space unknown"
    return OSError(errno.ENOSPC, f"checkpoint.save: no space left on device writing "
                   f"{str(path)!r} (its tensors take {need} bytes; {room}); the partial write "
                   "was removed and earlier checkpoints are intact. HINT: free disk space, keep "
                   "fewer checkpoints (keep=), or write them to another disk", str(path))


def _free_bytes(path: Path) -> int:
    """Free bytes on the file system of ``path`` (or of its nearest existing parent)."""
    while not path.exists() and path.parent != path:
        path = path.parent
    return shutil.disk_usage(path).free


def _check_meta(meta: Any) -> dict[str, Any]:
    if meta is not None and not isinstance(meta, Mapping):
        raise TypeError(f"meta: expected a dict or None, got {type(meta).__name__}. "
                        "HINT: meta={'epoch': 3, 'batch_in_epoch': 120}.")
    return dict(meta or {})


def _remove(p: Path) -> None:
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p, ignore_errors=True)
    elif p.exists() or p.is_symlink():
        p.unlink(missing_ok=True)


def _flatten_state(state: Any) -> tuple[dict[str, torch.Tensor], list[dict[str, Any]]]:
    tensors: dict[str, torch.Tensor] = {}
    leaves: list[dict[str, Any]] = []
    for p, leaf in _tree.leaves_with_path(state, "state"):
        if isinstance(leaf, torch.Tensor):
            tensors[p] = _check_storable(p, leaf)
            leaves.append({"path": p, **_spec(leaf)})
        elif isinstance(leaf, _JSON_SCALARS):
            leaves.append({"path": p, "value": leaf})
        else:
            raise TypeError(
                f"{p}: expected a tensor or a JSON scalar (bool, int, float, str, None), got "
                f"{type(leaf).__name__}. HINT: keep other objects out of the state (as static "
                "fields of a TrainState subclass) or store them as tensors.")
    return tensors, leaves


def _check_storable(p: str, t: torch.Tensor) -> torch.Tensor:
    if t.device.type == "meta" or t.layout != torch.strided:
        raise TypeError(f"{p}: expected a dense tensor with data, got a {t.layout} tensor on "
                        f"{t.device}. HINT: only materialized strided tensors can be saved.")
    return t.detach()


def _flatten_meta(obj: Any, p: str) -> tuple[Any, dict[str, torch.Tensor]]:
    """Split ``meta`` into a JSON-able tree (tensors replaced by references) and the tensors."""
    if isinstance(obj, torch.Tensor):
        return {_TENSOR_REF: p}, {p: _check_storable(p, obj)}
    if isinstance(obj, _JSON_SCALARS):
        return obj, {}
    out_tensors: dict[str, torch.Tensor] = {}
    if isinstance(obj, Mapping):
        out: Any = {}
        for k, v in obj.items():
            if not isinstance(k, str) or k == _TENSOR_REF:
                raise TypeError(f"{p}: expected str keys (not {_TENSOR_REF!r}), got {k!r}. "
                                "HINT: meta goes to JSON, whose object keys are strings.")
            out[k], ts = _flatten_meta(v, f"{p}[{k!r}]")
            out_tensors.update(ts)
        return out, out_tensors
    if isinstance(obj, (list, tuple)):
        out = []
        for i, v in enumerate(obj):
            o, ts = _flatten_meta(v, f"{p}[{i}]")
            out.append(o)
            out_tensors.update(ts)
        return out, out_tensors
    raise TypeError(f"{p}: expected a JSON value (dict, list, bool, int, float, str, None) or "
                    f"a tensor, got {type(obj).__name__}. HINT: convert it, e.g. float(x), "
                    "list(x), torch.as_tensor(x), or obj.state_dict() for a callback.")


def _spec(t: torch.Tensor) -> dict[str, Any]:
    return {"shape": list(t.shape), "dtype": str(t.dtype).removeprefix("torch.")}


_PARALLEL_BYTES = 1 << 26  # states this large are written by several threads


def _dcp_save(state_dict: dict[str, torch.Tensor], directory: Path) -> None:
    import torch.distributed.checkpoint as dcp

    # Large states: one data file per writer thread, so that serialization, writing and
    # hashing run in parallel (about 2x faster with 2 threads for 1.2 GB on 2 cores).
    nbytes = sum(t.nbytes for t in state_dict.values())
    threads = 1 if nbytes < _PARALLEL_BYTES else min(4, os.cpu_count() or 1)
    writer = dcp.FileSystemWriter(directory, sync_files=True, thread_count=threads)
    # no_dist: one process writes everything. The distributed runner will pass its process
    # group here instead; the files, manifest and restore stay the same.
    with _quiet_single_process_warning(), _unwrap_dcp_errors():
        dcp.save(state_dict, storage_writer=writer, no_dist=True)


@contextlib.contextmanager
def _quiet_single_process_warning() -> Iterator[None]:
    """Hide DCP's "assuming the intent is to save in a single process" warning.

    ``warnings.catch_warnings`` swaps process-global state, so it is used only on the main
    thread; a background save lets the warning through (shown once per process by default).
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"torch\.distributed is (disabled, )?"
                                r"unavailable or uninitialized")
        yield


@contextlib.contextmanager
def _unwrap_dcp_errors() -> Iterator[None]:
    """Re-raise the one error inside DCP's ``CheckpointException`` (a ``BaseException`` that
    ``except Exception`` misses), so that e.g. a full disk surfaces as the ``OSError`` it is."""
    from torch.distributed.checkpoint.api import CheckpointException

    try:
        yield
    except CheckpointException as e:
        if len(e.failures) != 1:
            raise
        (exc, _), = e.failures.values()
        raise exc from None


def _write_json(path: Path, obj: Any) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=1)
        f.flush()
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _sha256_all(paths: list[Path]) -> list[str]:
    """SHA-256 of each file, in threads (hashlib releases the GIL)."""
    if len(paths) < 2:
        return [_sha256(p) for p in paths]
    with ThreadPoolExecutor(min(len(paths), os.cpu_count() or 1)) as pool:
        return list(pool.map(_sha256, paths))


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------
# verify, restore, load_meta


def verify(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Check that ``path`` is a complete, uncorrupted checkpoint this version can read.

    Reads ``manifest.json``, checks its format version, and checks the size and SHA-256 of
    every file it lists. `restore` and `load_meta` do this first; files already verified in
    this process and unchanged since (same size, mtime and inode) are not hashed again.

    Args:
        path: a checkpoint directory written by `save`.

    Returns:
        The manifest (a dict).

    Raises:
        FileNotFoundError: if ``path`` does not exist.
        CheckpointError: if it is not a functrain checkpoint, is incomplete or corrupt, or was
            written in a newer format; the message says which and what to do.

    Example:
        >>> import tempfile, torch, functrain as ft
        >>> with tempfile.TemporaryDirectory() as d:
        ...     _ = ft.checkpoint.save(f"{d}/c", {"w": torch.ones(2)})
        ...     ft.checkpoint.verify(f"{d}/c")["format_version"]
        1
    """
    path = Path(path)
    manifest = _read_manifest(path)
    todo: list[tuple[str, Path, tuple[str, int, int, int]]] = []
    for name, want in manifest["files"].items():
        f = path / name
        if not f.is_file():
            raise CheckpointError(f"checkpoint {str(path)!r}: expected file {name!r} (listed "
                                  "in manifest.json), got none. HINT: the checkpoint is "
                                  "incomplete; use an older one (CheckpointManager.latest()).")
        st = f.stat()
        if st.st_size != want["bytes"]:
            raise CheckpointError(f"checkpoint {str(path)!r}: expected {name!r} of {want['bytes']}"
                                  f" bytes, got {st.st_size}. HINT: the file is truncated or "
                                  "corrupt; use an older checkpoint (CheckpointManager.latest()).")
        key = (str(f.resolve()), st.st_size, st.st_mtime_ns, st.st_ino)
        if _VERIFIED.get(key) != want["sha256"]:
            todo.append((name, f, key))
    for (name, _, key), digest in zip(todo, _sha256_all([f for _, f, _ in todo]), strict=True):
        want = manifest["files"][name]["sha256"]
        if digest != want:
            raise CheckpointError(
                f"checkpoint {str(path)!r}: expected {name!r} to have SHA-256 {want[:16]}..., "
                "got a different one. HINT: the file is corrupt; use an older checkpoint "
                "(CheckpointManager.latest()).")
        _VERIFIED[key] = want
    return manifest


_VERIFIED: dict[tuple[str, int, int, int], str] = {}  # files hashed in this process


def _read_manifest(path: Path) -> dict[str, Any]:
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {str(path)!r}: expected a checkpoint directory, "
                                "got a path that does not exist. HINT: check the path, or use "
                                "CheckpointManager(directory).latest() to find the newest one.")
    if not path.is_dir():
        raise CheckpointError(f"checkpoint {str(path)!r}: expected a checkpoint directory "
                              f"(written by functrain.checkpoint.save), got {_sniff(path)}.")
    mf = path / _MANIFEST
    if not mf.is_file():
        what = ("a DCP checkpoint without functrain's manifest.json"
                if (path / ".metadata").exists() else "a directory without manifest.json")
        raise CheckpointError(
            f"checkpoint {str(path)!r}: expected a complete functrain checkpoint, got {what}. "
            "HINT: a save that did not finish leaves no manifest; use an older checkpoint "
            "(CheckpointManager.latest()).")
    try:
        manifest = json.loads(mf.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"checkpoint {str(path)!r}: expected manifest.json to be JSON, "
                              f"got unreadable content ({e}). HINT: the checkpoint is corrupt; "
                              "use an older one (CheckpointManager.latest()).") from None
    if not isinstance(manifest, dict) or manifest.get("format") != _FORMAT:
        raise CheckpointError(f"checkpoint {str(path)!r}: expected a manifest with format "
                              f"{_FORMAT!r}, got another JSON file. HINT: this is not a "
                              "functrain checkpoint.")
    version = manifest.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION or version < 1:
        raise CheckpointError(
            f"checkpoint {str(path)!r}: expected format version <= {FORMAT_VERSION}, got "
            f"{version!r} (written by functrain {manifest.get('functrain_version')}). HINT: "
            f"upgrade functrain (this is {__version__}) to read it.")
    files = manifest.get("files")
    if not (isinstance(files, dict) and isinstance(manifest.get("leaves"), list)
            and isinstance(manifest.get("meta_tensors"), list)
            and all(isinstance(v, dict) and {"bytes", "sha256"} <= set(v) for v in files.values())
            and all(n not in ("", ".", "..") and "/" not in n and "\\" not in n for n in files)):
        raise CheckpointError(f"checkpoint {str(path)!r}: expected a manifest with files, leaves"
                              " and meta_tensors, got a malformed one. HINT: the checkpoint is "
                              "corrupt or was edited; use an older one.")
    return manifest


def _sniff(path: Path) -> str:
    """Say what a file that should have been a checkpoint directory looks like."""
    if zipfile.is_zipfile(path):
        return ("a zip file, probably a torch.save file. HINT: load it with "
                "torch.load(path, weights_only=True) and build the state from it (e.g. "
                "TrainState.create after model.load_state_dict)")
    with open(path, "rb") as f:
        head = f.read(16)
    if len(head) >= 9 and head[8:9] == b"{":
        return ("what looks like a safetensors file. HINT: read weights-only files with "
                "functrain.checkpoint.load_params(path)")
    return "a file of unknown format. HINT: pass the checkpoint directory that save() wrote"


def restore(path: str | os.PathLike[str], like: Any) -> Any:
    """Read the checkpoint at ``path`` into a new pytree with the structure of ``like``.

    ``like`` gives the structure, the static fields (``tx``, ``module``) and, per leaf, the
    expected shape, dtype and device (leaves on the ``meta`` device load to the CPU). ``like``
    itself is not modified: every tensor is freshly allocated.

    Args:
        path: a checkpoint directory written by `save`.
        like: a state of the same model and optimizer, e.g. ``TrainState.create(...)``.

    Returns:
        The saved state, bit for bit, with ``like``'s structure.

    Raises:
        FileNotFoundError: if ``path`` does not exist.
        CheckpointError: if ``path`` is not a complete, intact, readable checkpoint.
        functrain.tree.TreeMismatchError: if ``like`` does not match the checkpoint; names
            the first leaf path that differs.

    Example:
        >>> import tempfile, torch, functrain as ft
        >>> model = torch.nn.Linear(3, 2)
        >>> state = ft.TrainState.create(model, ft.optim.adamw(1e-3), seed=0)
        >>> with tempfile.TemporaryDirectory() as d:
        ...     _ = ft.checkpoint.save(f"{d}/c", state.replace(step=state.step + 7))
        ...     back = ft.checkpoint.restore(f"{d}/c", like=state)
        >>> int(back.step), back.tx is state.tx
        (7, True)
    """
    path = Path(path)
    manifest = verify(path)
    saved = {leaf["path"]: leaf for leaf in manifest["leaves"]}
    spec = _tree.structure(like)
    like_leaves = _tree.leaves_with_path(like, "state")
    where = f"in the checkpoint {str(path)!r}"
    for p, leaf in like_leaves:
        if p not in saved:
            raise _tree.TreeMismatchError(
                f"{p}: expected (as in like) a leaf {where}, got none. HINT: " + _HINT_LIKE)
        rec = saved[p]
        if isinstance(leaf, torch.Tensor) != ("dtype" in rec):
            raise _tree.TreeMismatchError(
                f"{p}: expected {_describe_like(leaf)} (as in like), got {_describe_rec(rec)} "
                f"{where}. HINT: " + _HINT_LIKE)
        if isinstance(leaf, torch.Tensor):
            if list(leaf.shape) != rec["shape"]:
                raise _tree.TreeMismatchError(
                    f"{p}: expected shape {tuple(leaf.shape)} (as in like), got "
                    f"{tuple(rec['shape'])} {where}. HINT: " + _HINT_LIKE)
            if str(leaf.dtype).removeprefix("torch.") != rec["dtype"]:
                raise _tree.TreeMismatchError(
                    f"{p}: expected dtype {leaf.dtype} (as in like), got torch.{rec['dtype']} "
                    f"{where}. HINT: " + _HINT_LIKE + " Cast after restoring if intended.")
    like_paths = {p for p, _ in like_leaves}
    extra = [p for p in saved if p not in like_paths]
    if extra:
        raise _tree.TreeMismatchError(
            f"{extra[0]}: expected no such leaf (like has none), got one {where} "
            f"({len(extra)} extra in all). HINT: " + _HINT_LIKE)
    loaded = _dcp_load(path, {p: leaf for p, leaf in like_leaves
                              if isinstance(leaf, torch.Tensor)}, manifest)
    out = [loaded[p] if p in loaded else saved[p]["value"] for p, _ in like_leaves]
    return optree.tree_unflatten(spec, out)


_HINT_LIKE = ("restore into a state built like the saved one: the same model, optimizer and "
              "extras (TrainState.create(model, optimizer, ...)).")


def _describe_like(leaf: Any) -> str:
    return _tree._describe(leaf) if isinstance(leaf, torch.Tensor) else (
        f"a {type(leaf).__name__} value")


def _describe_rec(rec: dict[str, Any]) -> str:
    if "dtype" in rec:
        return f"tensor of shape {tuple(rec['shape'])} and dtype torch.{rec['dtype']}"
    return f"a {type(rec['value']).__name__} value"


def load_meta(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read the ``meta`` dict saved with a checkpoint (tensors come back on the CPU).

    Args:
        path: a checkpoint directory written by `save`.

    Returns:
        The ``meta`` passed to `save` (``{}`` if none), with tuples as lists.

    Raises:
        FileNotFoundError: if ``path`` does not exist.
        CheckpointError: if ``path`` is not a complete, intact, readable checkpoint.

    Example:
        >>> import tempfile, torch, functrain as ft
        >>> meta = {"epoch": 2, "loss_window": torch.tensor([0.5, 0.25]), "cb": [{"best": 1.0}]}
        >>> with tempfile.TemporaryDirectory() as d:
        ...     _ = ft.checkpoint.save(f"{d}/c", {"w": torch.ones(1)}, meta=meta)
        ...     ft.checkpoint.load_meta(f"{d}/c")
        {'epoch': 2, 'loss_window': tensor([0.5000, 0.2500]), 'cb': [{'best': 1.0}]}
    """
    path = Path(path)
    manifest = verify(path)
    meta = json.loads((path / _META).read_text(encoding="utf-8"))
    tensors = {rec["path"]: torch.empty(rec["shape"], dtype=_dtype(rec["dtype"]), device="meta")
               for rec in manifest["meta_tensors"]}
    if tensors:
        tensors = _dcp_load(path, tensors, manifest)

    def fill(obj: Any) -> Any:
        if isinstance(obj, dict):
            if set(obj) == {_TENSOR_REF}:
                ref = obj[_TENSOR_REF]
                if not (isinstance(ref, str) and ref in tensors):
                    raise CheckpointError(
                        f"checkpoint {str(path)!r}: expected meta.json's tensor references to "
                        f"name tensors listed in manifest.json, got {ref!r}, which it does not "
                        "list. HINT: the checkpoint was modified after it was written; do not "
                        "load it.")
                return tensors[ref]
            return {k: fill(v) for k, v in obj.items()}
        if isinstance(obj, list):
            return [fill(v) for v in obj]
        return obj

    return fill(meta)


def _dtype(name: str) -> torch.dtype:
    dt = getattr(torch, name, None)
    if not isinstance(dt, torch.dtype):
        raise CheckpointError(f"checkpoint: expected a torch dtype name, got {name!r}. "
                              "HINT: written by a newer torch? Upgrade torch to read it.")
    return dt


def _dcp_load(path: Path, like: dict[str, torch.Tensor],
              manifest: dict[str, Any]) -> dict[str, torch.Tensor]:
    """Load the tensors shaped like ``like`` (by key) through DCP, with the safety checks.

    Returns new tensors on ``like``'s devices (the CPU for ``meta`` ones).
    """
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata
    from torch.distributed.checkpoint.planner import LoadItemType

    md = _read_dcp_metadata(path / ".metadata")
    for key, t in like.items():
        entry = md.state_dict_metadata.get(key)
        if not isinstance(entry, TensorStorageMetadata) or tuple(entry.size) != tuple(
                t.shape) or entry.properties.dtype != t.dtype:
            raise CheckpointError(
                f"checkpoint {str(path)!r}: expected DCP entry {key!r} to be a tensor of shape "
                f"{tuple(t.shape)} and dtype {t.dtype} as the manifest says, got {entry!r}. "
                "HINT: the checkpoint was modified after it was written; do not load it.")
    storage = md.storage_data or {}
    for info in storage.values():
        if getattr(info, "relative_path", None) not in manifest["files"]:
            raise CheckpointError(
                f"checkpoint {str(path)!r}: expected DCP to read only files listed in "
                f"manifest.json, got a reference to {getattr(info, 'relative_path', info)!r}. "
                "HINT: the checkpoint was modified after it was written; do not load it.")
    whole = _whole_tensors(md, like)
    loaded: dict[str, torch.Tensor] = {}

    class SafeReader(dcp.FileSystemReader):
        def read_metadata(self, *args: Any, **kwargs: Any) -> Any:
            md.storage_meta.load_id = self.load_id
            return md

        def read_data(self, plan: Any, planner: Any) -> Any:
            if not whole:
                return super().read_data(plan, planner)
            by_file: dict[str, list[Any]] = {}
            for req in plan.items:
                if req.type != LoadItemType.TENSOR:
                    planner.load_bytes(req, io.BytesIO())  # raises
                by_file.setdefault(storage[req.storage_index].relative_path, []).append(req)
            for name, reqs in by_file.items():
                with open(path / name, "rb") as f:
                    for req in reqs:
                        view = self._slice_file(f, storage[req.storage_index])
                        try:
                            t = torch.load(view, map_location="cpu", weights_only=True)
                        except Exception as e:  # a crafted or foreign file: not torch.save's
                            raise CheckpointError(
                                f"checkpoint {str(path)!r}: expected {name!r} to hold "
                                f"{req.dest_index.fqn!r} as torch.save data, got unreadable "
                                f"bytes ({type(e).__name__}: {str(e)[:200]}). HINT: the "
                                "checkpoint is corrupt or was modified; do not load it.") from None
                        want = like[req.dest_index.fqn]
                        if not (isinstance(t, torch.Tensor) and t.shape == want.shape
                                and t.dtype == want.dtype):
                            raise CheckpointError(
                                f"checkpoint {str(path)!r}: expected {req.dest_index.fqn!r} "
                                f"to hold a tensor like {_tree._describe(want)}, got "
                                f"{_tree._describe(t)}. HINT: the checkpoint was modified "
                                "after it was written; do not load it.")
                        loaded[req.dest_index.fqn] = t
            fut: torch.futures.Future[None] = torch.futures.Future()
            fut.set_result(None)
            return fut

    class TensorOnlyPlanner(DefaultLoadPlanner):
        def load_bytes(self, read_item: Any, value: io.BytesIO) -> None:
            raise CheckpointError(f"checkpoint {str(path)!r}: expected only tensor entries, "
                                  "got a pickled object; refusing to unpickle it.")

    if whole:  # DCP plans with the shapes; the data never goes into these one-element views
        targets = {k: torch.empty((), dtype=t.dtype).expand(t.shape) for k, t in like.items()}
    else:
        targets = {k: torch.empty_like(t, device="cpu" if t.device.type == "meta" else None)
                   for k, t in like.items()}
    try:
        with _quiet_single_process_warning(), _unwrap_dcp_errors():
            dcp.load(targets, storage_reader=SafeReader(path), planner=TensorOnlyPlanner(),
                     no_dist=True)
    except (CheckpointError, OSError, MemoryError):
        raise
    except Exception as e:  # DCP's reader on a crafted file: IndexError, UnpicklingError...
        raise CheckpointError(
            f"checkpoint {str(path)!r}: expected readable DCP tensor data, got an error "
            f"({type(e).__name__}: {str(e)[:200]}). HINT: the checkpoint is corrupt or was "
            "modified; do not load it.") from None
    if not whole:
        return targets
    for k, t in like.items():
        if k not in loaded and t.numel() == 0:  # DCP plans no read for an empty tensor
            loaded[k] = torch.empty(t.shape, dtype=t.dtype)
    return {k: loaded[k] if t.device.type in ("cpu", "meta") else loaded[k].to(t.device)
            for k, t in like.items()}


def _whole_tensors(md: Any, keys: Any) -> bool:
    """Whether the fast read path applies: each tensor stored whole, in one plain chunk (what
    one process writes). It keeps the tensors ``torch.load`` returns instead of copying each
    into a preallocated one, as DCP's ``FileSystemReader`` does (twice the memory traffic)."""
    import torch.distributed.checkpoint as dcp

    return (hasattr(dcp.FileSystemReader, "_slice_file")
            and all(len(md.state_dict_metadata[k].chunks) == 1
                    and not any(md.state_dict_metadata[k].chunks[0].offsets) for k in keys)
            and not any(getattr(info, "transform_descriptors", None)
                        for info in (md.storage_data or {}).values()))


def _read_dcp_metadata(path: Path) -> Any:
    """Unpickle DCP's ``.metadata`` allowing only the types it is made of (see Safety)."""
    from torch.distributed.checkpoint.metadata import StorageMeta

    with open(path, "rb") as f:
        try:
            md = _MetadataUnpickler(f).load()
        except CheckpointError:
            raise
        except Exception as e:
            raise CheckpointError(f"checkpoint {str(path.parent)!r}: expected a readable DCP "
                                  f".metadata, got an error ({type(e).__name__}: {e}). HINT: the "
                                  "checkpoint is corrupt; use an older one.") from None
    if type(md).__name__ != "Metadata":
        raise CheckpointError(f"checkpoint {str(path.parent)!r}: expected DCP Metadata in "
                              f".metadata, got {type(md).__name__}.")
    if getattr(md, "storage_meta", None) is None:
        md.storage_meta = StorageMeta()
    return md


_DCP_MD = "torch.distributed.checkpoint.metadata"
_ALLOWED_GLOBALS = {
    *((_DCP_MD, n) for n in ("Metadata", "TensorStorageMetadata", "BytesStorageMetadata",
                             "ChunkStorageMetadata", "TensorProperties", "MetadataIndex",
                             "StorageMeta", "_MEM_FORMAT_ENCODING")),
    ("torch.distributed.checkpoint.filesystem", "_StorageInfo"),
    ("torch", "Size"), ("torch.serialization", "_get_layout"),
    *((m, n) for m in ("pathlib", "pathlib._local")
      for n in ("PosixPath", "WindowsPath", "PurePosixPath", "PureWindowsPath")),
}


class _MetadataUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED_GLOBALS or (
                module == "torch" and isinstance(getattr(torch, name, None),
                                                 (torch.dtype, torch.layout, torch.memory_format))):
            return super().find_class(module, name)
        raise CheckpointError(f"checkpoint: expected DCP metadata made of DCP's own types, got a "
                              f"reference to {module}.{name}; refusing to load it. HINT: the "
                              "file was not written by DCP and may try to run code.")


# ---------------------------------------------------------------------------------------------
# A run's checkpoints


class CheckpointManager:
    """The checkpoints of one run in ``directory``: ``step_000000123/``, the last ``keep`` kept.

    `save` writes ``directory/step_<step, 9 digits>`` with `functrain.checkpoint.save` and then
    deletes the oldest checkpoints beyond ``keep``: only after the new one is completely
    written, so a crash never leaves fewer than before. ``save(..., blocking=False)`` copies the
    tensors to host memory at once (so the next step may overwrite the state) and writes in a
    background thread; an error there is raised by the next `save`, `wait`, `all` or `latest`.
    A save still running when the program exits is completed first (or, if it fails, the
    error is printed and the exit status is 1).
    "Newest" means the highest step; checkpoints of higher steps than the one being saved (from
    a run that went further) are neither counted nor deleted. On creation the manager cleans
    up after crashed saves of processes that are gone (see `functrain.checkpoint`, Atomicity).

    Args:
        directory: the checkpoint directory of the run, e.g. ``run_dir / "checkpoints"``.
        keep: how many checkpoints to keep (``None``: all).

    Example:
        >>> import tempfile, torch, functrain as ft
        >>> state = ft.TrainState.create(torch.nn.Linear(2, 1), ft.optim.sgd(0.1))
        >>> with tempfile.TemporaryDirectory() as d:
        ...     mgr = ft.checkpoint.CheckpointManager(d, keep=2)
        ...     for step in (10, 20, 30):
        ...         _ = mgr.save(step, state, meta={"epoch": step // 10})
        ...     [p.name for p in mgr.all()], mgr.latest().name
        (['step_000000020', 'step_000000030'], 'step_000000030')
    """

    def __init__(self, directory: str | os.PathLike[str], *, keep: int | None = 3) -> None:
        if keep is not None and (isinstance(keep, bool) or not isinstance(keep, int)
                                 or keep < 1):
            raise ValueError(f"keep: expected a positive int or None, got {keep!r}. "
                             "HINT: keep=3 keeps the three newest checkpoints.")
        self.directory = Path(directory)
        self.keep = keep
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self._error_path: Path | None = None
        self._remove_stale_tmp()

    def path(self, step: int) -> Path:
        """The directory of the checkpoint of ``step`` (which may not exist).

        Example:
            >>> import tempfile
            >>> with tempfile.TemporaryDirectory() as d:
            ...     CheckpointManager(d).path(123).name
            'step_000000123'
        """
        return self.directory / f"step_{_check_step(step):09d}"

    def save(self, step: int | torch.Tensor, state: Any, meta: Mapping[str, Any] | None = None,
             *, blocking: bool = True) -> Path:
        """Save ``state`` and ``meta`` as the checkpoint of ``step``, then evict old ones.

        Waits for a previous non-blocking save first (and raises its error, if any). A
        checkpoint of the same step is replaced.

        Args:
            step: the step number (an int or a 0-d integer tensor, e.g. ``state.step``).
            state: the pytree to save (see `functrain.checkpoint.save`).
            meta: the loop's state (see `functrain.checkpoint.save`).
            blocking: ``False``: copy the tensors to host memory now and write in a
                background thread; `wait` joins it. Needs host memory for one more copy of
                the state.

        Returns:
            The checkpoint's directory (complete once the save, or `wait`, has returned).

        Example:
            >>> import tempfile, torch, functrain as ft
            >>> with tempfile.TemporaryDirectory() as d:
            ...     mgr = ft.checkpoint.CheckpointManager(d)
            ...     p = mgr.save(1, {"w": torch.ones(3)}, blocking=False)
            ...     mgr.wait()
            ...     ft.checkpoint.restore(p, like={"w": torch.zeros(3)})
            {'w': tensor([1., 1., 1.])}
        """
        step = _check_step(step)
        self.wait()
        path = self.path(step)
        if blocking:
            self._write(path, state, meta)
            return path
        _flatten_state(state)  # validate now, in the caller's thread
        _flatten_meta(_check_meta(meta), "meta")
        state = _tree.map(_to_host, state)  # the copies the background thread owns
        meta = _tree.map(_to_host, _check_meta(meta))
        self._thread = threading.Thread(target=self._background, args=(path, state, meta),
                                        name=f"functrain-checkpoint-{step}")
        _finish_at_exit(self)
        self._thread.start()  # not a daemon; _finish_at_exit completes it before pools close
        return path

    def _background(self, path: Path, state: Any, meta: Any) -> None:
        try:
            self._write(path, state, meta)
        except BaseException as e:  # handed to the main thread by wait()
            self._error = e
            self._error_path = path

    def _write(self, path: Path, state: Any, meta: Any) -> None:
        save(path, state, meta=meta, overwrite=True)
        if self.keep is not None:
            step = int(path.name.removeprefix("step_"))
            done = [p for p in self._step_dirs() if (p / _MANIFEST).exists()]
            kept = [p for p in done if _step_of(p) <= step][-self.keep:]
            oldest = _step_of(kept[0]) if kept else step
            for p in self._step_dirs():
                if _step_of(p) < oldest:
                    shutil.rmtree(p, ignore_errors=True)

    def wait(self) -> None:
        """Wait for a non-blocking save to finish; raise the error it ended with, if any.

        Example:
            >>> import tempfile
            >>> with tempfile.TemporaryDirectory() as d:
            ...     CheckpointManager(d).wait()  # nothing pending: returns at once
        """
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._error is not None:
            err, self._error = self._error, None
            raise err

    def all(self) -> list[Path]:
        """The complete checkpoints (those with a manifest), oldest first; waits for a save.

        Does not verify checksums (`latest` does).

        Example:
            >>> import tempfile
            >>> with tempfile.TemporaryDirectory() as d:
            ...     CheckpointManager(d).all()
            []
        """
        self.wait()
        return [p for p in self._step_dirs() if (p / _MANIFEST).is_file()]

    def latest(self, *, strict: bool = False) -> Path | None:
        """The newest intact checkpoint, or ``None``; waits for a save.

        Checks checksums (`functrain.checkpoint.verify`) from the newest checkpoint down,
        skipping each incomplete or corrupt one with a warning that names it and the reason.

        Args:
            strict: when there are checkpoints but none is intact, raise instead of returning
                ``None`` (what a resume wants: not to start afresh over a corrupt run).

        Raises:
            CheckpointError: with ``strict``, if every checkpoint found is incomplete or
                corrupt; lists each with the reason it was rejected. Nothing is deleted.

        Example:
            >>> import tempfile
            >>> with tempfile.TemporaryDirectory() as d:
            ...     CheckpointManager(d).latest() is None
            True
        """
        self.wait()
        rejected: list[str] = []
        for p in reversed(self._step_dirs()):
            try:
                verify(p)
                return p
            except (CheckpointError, OSError) as e:
                rejected.append(f"  {p.name}: {e}")
                warnings.warn(f"skipping {e}", stacklevel=2)  # e names the path
        if strict and rejected:
            raise CheckpointError(
                f"checkpoints in {str(self.directory)!r}: expected at least one intact "
                f"checkpoint, got {len(rejected)}, none of them intact:\n"
                + "\n".join(rejected) + "\nHINT: nothing was deleted. Restore an intact copy "
                "into that directory, or start afresh elsewhere or with fit(..., resume=None)"
                " (which moves these aside, see CheckpointManager.set_aside).")
        return None

    def set_aside(self, after_step: int, reason: str) -> Path | None:
        """Move the checkpoints of steps above ``after_step`` out of the run's way, keeping them.

        After a rollback (a resume from an older checkpoint), or a fresh start in a directory
        that holds checkpoints (``after_step=-1``), the checkpoints that are not part of what
        this run continues would otherwise be taken for its newest (``latest``), or evicted
        or overwritten by its saves. They go, untouched, into one folder
        ``directory/aside-<UTC time>-after-<after_step>/`` with a ``README`` saying why.

        Args:
            after_step: keep the checkpoints of this step and below in place.
            reason: why, written into the folder's ``README``.

        Returns:
            The folder, or ``None`` if there was nothing to move.

        Example:
            >>> import tempfile, torch
            >>> with tempfile.TemporaryDirectory() as d:
            ...     mgr = CheckpointManager(d, keep=None)
            ...     for step in (10, 20, 30):
            ...         _ = mgr.save(step, {"w": torch.ones(1)})
            ...     aside = mgr.set_aside(10, "rolled back to step 10")
            ...     [p.name for p in mgr.all()], sorted(q.name for q in aside.iterdir())
            (['step_000000010'], ['README', 'step_000000020', 'step_000000030'])
        """
        self.wait()
        after_step = check_int("after_step", after_step, minimum=-1)
        move = [p for p in self._step_dirs() if _step_of(p) > after_step]
        if not move:
            return None
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        aside = self.directory / f"aside-{stamp}-after-{after_step}"
        n = 1
        while aside.exists():
            n += 1
            aside = self.directory / f"aside-{stamp}-after-{after_step}-{n}"
        aside.mkdir()
        (aside / "README").write_text(
            f"Checkpoints set aside by functrain {__version__} at {stamp}: {reason}\n"
            "They are intact as written; move one back into the parent directory to use it.\n",
            encoding="utf-8")
        for p in move:
            os.rename(p, aside / p.name)
        _fsync_dir(aside)
        _fsync_dir(self.directory)
        return aside

    def _step_dirs(self) -> list[Path]:
        if not self.directory.is_dir():
            return []
        return sorted((p for p in self.directory.iterdir()
                       if p.is_dir() and _STEP_DIR.fullmatch(p.name)), key=_step_of)

    def _remove_stale_tmp(self) -> None:
        """Clean up after saves that crashed: ``.tmp-<name>-<pid>`` / ``.old-<name>-<pid>``
        directories whose process is gone.

        One that holds a complete checkpoint (a manifest) whose ``<name>`` is missing (a crash
        between the two renames of an overwrite) is moved back into place; the rest are
        deleted. Assumes the directory is written from this host only (true while one process
        writes checkpoints); the distributed runner will need a per-host marker.
        """
        if not self.directory.is_dir():
            return
        for p in sorted(self.directory.iterdir(), key=lambda p: not p.name.startswith(".tmp")):
            m = _TMP_DIR.fullmatch(p.name)
            if not m or _pid_alive(int(m.group(2))):
                continue
            target = self.directory / m.group(1)
            if (p / _MANIFEST).is_file() and not target.exists():
                os.rename(p, target)
            else:
                _remove(p)


def _check_step(step: Any) -> int:
    """A step number: a non-negative int, or a 0-d integer tensor such as ``state.step``."""
    if isinstance(step, torch.Tensor) and step.dim() == 0 and not (
            step.is_floating_point() or step.is_complex() or step.dtype == torch.bool):
        step = int(step)
    elif isinstance(step, torch.Tensor):
        raise TypeError(f"step: expected an int or a 0-d integer tensor, got "
                        f"{describe(step)}. HINT: pass state.step or int(state.step).")
    return check_int("step", step, minimum=0, hint="checkpoints are named by their step, "
                     "e.g. mgr.save(int(state.step), state).")


# Managers with a background save that may still run when the interpreter exits.
_AT_EXIT: weakref.WeakSet[CheckpointManager] = weakref.WeakSet()
_EXIT_HOOK = [False]


def _finish_at_exit(manager: CheckpointManager) -> None:
    """Make sure ``manager``'s background save completes, or fails loudly, at exit.

    At a normal interpreter exit, ``concurrent.futures`` refuses new work (threading's exit
    hooks run before non-daemon threads are joined), which a save still in progress needs
    (DCP's and the checksums' thread pools), so it would fail unseen. functrain's own hook,
    registered after ``concurrent.futures``' and so run before it, waits for each pending save
    while the pools still work; if one failed, it prints the error and exits with status 1.
    """
    _AT_EXIT.add(manager)
    if _EXIT_HOOK[0]:
        return
    register = getattr(threading, "_register_atexit", None)  # CPython >= 3.9
    try:
        (register or atexit.register)(_finish_pending_saves)
        _EXIT_HOOK[0] = True
    except RuntimeError:  # already shutting down: the thread is joined as non-daemon
        pass


def _finish_pending_saves() -> None:
    failed = False
    for manager in list(_AT_EXIT):
        if manager._thread is not None:
            manager._thread.join()
            manager._thread = None
        if manager._error is not None:
            err, manager._error = manager._error, None
            where = manager._error_path or manager.directory
            print(f"functrain: the checkpoint {str(where)!r} was NOT written: a background save"
                  " failed while the program was exiting:", file=sys.stderr)
            traceback.print_exception(type(err), err, err.__traceback__, file=sys.stderr)
            failed = True
    if failed:  # never let an exit status of 0 report a save that did not happen
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(1)


_STEP_DIR = re.compile(r"step_\d+")
_TMP_DIR = re.compile(r"\.(?:tmp|old)-(.+)-(\d+)")


def _step_of(p: Path) -> int:
    return int(p.name.removeprefix("step_"))


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _to_host(x: Any) -> Any:
    if not isinstance(x, torch.Tensor):
        return x
    return x.detach().to("cpu", copy=True)


# ---------------------------------------------------------------------------------------------
# Weights-only export


def export_params(path: str | os.PathLike[str], params: Mapping[str, torch.Tensor]) -> Path:
    """Write ``params`` (name -> tensor) to one safetensors file, atomically.

    For inference and sharing: weights only, no optimizer state, readable by any safetensors
    reader (``safetensors.torch.load_file``, Hugging Face tools). Needs the optional
    ``safetensors`` package.

    Args:
        path: the file to write (conventionally ``*.safetensors``); replaced if it exists.
        params: a flat dict of tensors, e.g. ``state.params``; copied to the CPU.

    Returns:
        ``path`` as a ``Path``.

    Raises:
        ImportError: if ``safetensors`` is not installed.
        TypeError: if ``params`` is not a flat dict of str -> tensor; names the entry.

    Example:
        >>> import importlib.util, tempfile, torch, functrain as ft
        >>> state = ft.TrainState.create(torch.nn.Linear(2, 1), ft.optim.sgd(0.1))
        >>> with tempfile.TemporaryDirectory() as d:
        ...     if importlib.util.find_spec("safetensors"):
        ...         p = ft.checkpoint.export_params(f"{d}/model.safetensors", state.params)
        ...         assert sorted(ft.checkpoint.load_params(p)) == ["bias", "weight"]
    """
    st = _import_safetensors()
    if not isinstance(params, Mapping):
        raise TypeError(f"params: expected a dict of str -> tensor, got {type(params).__name__}."
                        " HINT: pass state.params.")
    tensors: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    for k, v in params.items():
        if not isinstance(k, str) or not isinstance(v, torch.Tensor):
            raise TypeError(f"params[{k!r}]: expected a tensor under a str key, got "
                            f"{type(v).__name__}. HINT: pass a flat dict such as state.params.")
        v = _check_storable(f"params[{k!r}]", v).to("cpu").contiguous()
        ptr = v.untyped_storage().data_ptr()
        tensors[k] = v.clone() if ptr in seen and v.numel() else v  # tied weights: own copies
        seen.add(ptr)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".tmp-{path.name}-{os.getpid()}"
    try:
        st.save_file(tensors, str(tmp), metadata={"format": "functrain-params",
                                                  "functrain_version": __version__})
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def load_params(path: str | os.PathLike[str], *,
                device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """Read a safetensors file (e.g. from `export_params`) as a dict of tensors.

    Args:
        path: the file.
        device: where to put the tensors.

    Returns:
        name -> tensor, in the file's order.

    Raises:
        ImportError: if ``safetensors`` is not installed.
        FileNotFoundError: if ``path`` does not exist.
        CheckpointError: if the file is not a safetensors file.

    Example:
        >>> import importlib.util, tempfile, torch, functrain as ft
        >>> with tempfile.TemporaryDirectory() as d:
        ...     if importlib.util.find_spec("safetensors"):
        ...         p = ft.checkpoint.export_params(f"{d}/w.safetensors", {"w": torch.ones(2)})
        ...         assert torch.equal(ft.checkpoint.load_params(p)["w"], torch.ones(2))
    """
    st = _import_safetensors()
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"load_params: expected a safetensors file, got {str(path)!r}, "
                                "which " + ("is a directory. HINT: a checkpoint directory is "
                                            "read with functrain.checkpoint.restore"
                                            if path.is_dir() else "does not exist."))
    try:
        return st.load_file(str(path), device=str(device))
    except Exception as e:
        if isinstance(e, (OSError, MemoryError)):
            raise
        raise CheckpointError(f"load_params: expected a safetensors file, got {str(path)!r}, "
                              f"which is not one ({type(e).__name__}: {e}). HINT: a torch.save "
                              "file is read with torch.load(path, weights_only=True).") from None


def _import_safetensors() -> Any:
    try:
        import safetensors.torch
    except ImportError:
        raise ImportError("export_params / load_params need the optional package safetensors,"
                          " which is not installed. HINT: pip install safetensors") from None
    return safetensors.torch
