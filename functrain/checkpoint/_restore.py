"""`verify`, `restore` and `load_meta`: reading a checkpoint back, every file checked first."""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path
from typing import Any

import optree
import torch

from .. import tree as _tree
from .._errors import describe
from .._version import __version__
from ._dcp import _dcp_load
from ._format import (
    _FORMAT,
    _MANIFEST,
    _META,
    _TENSOR_REF,
    FORMAT_VERSION,
    CheckpointError,
    _sha256_all,
)

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
    itself is not modified: every tensor is freshly allocated. A sharded ``like``
    (`functrain.distributed.shard_state`) gets each rank's rows, whatever number of ranks
    wrote the checkpoint; a training state restored on another number of ranks than wrote it
    comes with a warning (a resumed run's data order differs).

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
    tx = getattr(like, "tx", None)
    if callable(getattr(tx, "checkpoint_view", None)):
        # A sharded state (functrain.distributed.shard_state): DCP reads each rank's rows of
        # the full tensors, whatever number of ranks wrote them.
        return tx.from_checkpoint_view(_restore(path, tx.checkpoint_view(like)))
    return _restore(path, like)


def _restore(path: Path, like: Any) -> Any:
    manifest = verify(path)
    _warn_if_resharded(path, manifest, like)
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


def _warn_if_resharded(path: Path, manifest: dict[str, Any], like: Any) -> None:
    """Warn when a training state is restored on another number of ranks than wrote it."""
    saved = manifest.get("world_size", 1)
    import torch.distributed as dist

    now = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
    if saved != now and hasattr(like, "step") and hasattr(like, "params"):
        import warnings

        warnings.warn(
            f"checkpoint {str(path)!r} was written by {saved} rank(s) and is restored on {now}:"
            " the state (parameters, optimizer state, step) is resharded exactly, but a run "
            "resumed from it does not repeat the uninterrupted run's data order (each rank's "
            "share of every epoch depends on the number of ranks).", stacklevel=3)


_HINT_LIKE = ("restore into a state built like the saved one: the same model, optimizer and "
              "extras (TrainState.create(model, optimizer, ...)).")


def _describe_like(leaf: Any) -> str:
    return describe(leaf) if isinstance(leaf, torch.Tensor) else (
        f"a {type(leaf).__name__} value")


def _describe_rec(rec: dict[str, Any]) -> str:
    if "dtype" in rec:
        return f"a {rec['dtype']} tensor of shape {tuple(rec['shape'])}"
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
