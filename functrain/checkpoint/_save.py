"""`save`: a pytree and a meta dict to a checkpoint directory, atomically."""

from __future__ import annotations

import errno
import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from .. import tree as _tree
from .._errors import describe
from .._version import __version__
from ._dcp import _dcp_save
from ._format import (
    _FORMAT,
    _JSON_SCALARS,
    _MANIFEST,
    _META,
    _TENSOR_REF,
    FORMAT_VERSION,
    CheckpointError,
    _fsync_dir,
    _sha256_all,
    _write_json,
)

# ---------------------------------------------------------------------------------------------
# save


def save(path: str | os.PathLike[str], state: Any, *, meta: Mapping[str, Any] | None = None,
         overwrite: bool = False, process_group: Any = None) -> Path:
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
        process_group: save cooperatively with every rank of this ``torch.distributed``
            group (all of them call `save` with the same arguments, at the same point): DCP
            spreads the tensor data over the ranks (each replicated tensor written once, in
            ``__<rank>_<i>.distcp``), rank 0 then writes ``meta.json`` and the manifest (with
            the checksums of every rank's files) and renames the directory into place; `save`
            returns on every rank once the checkpoint is complete. The directory must be on a
            file system all ranks share. None (default): this process writes alone, or,
            for a sharded state (`functrain.distributed.shard_state`), every rank of its
            group, each its shards, stored as tensors of the full shapes.

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
    tx = getattr(state, "tx", None)
    if callable(getattr(tx, "checkpoint_view", None)):
        # A sharded state (functrain.distributed.shard_state): its shards as tensors of the
        # full shapes, written by every rank of its group (and restorable on any number).
        state = tx.checkpoint_view(state)
        process_group = tx.group if process_group is None else process_group
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
    group = _cooperative_group(process_group)
    if group is not None:
        import torch.distributed as dist

        manifest["world_size"] = dist.get_world_size(group)  # restore warns on another
        return _save_together(path, group, {**tensors, **meta_tensors}, meta_json, manifest)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".tmp-{path.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        _dcp_save({**tensors, **meta_tensors}, tmp)
        _finish(path, tmp, meta_json, manifest)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        full = _disk_full(e, path, tensors, meta_tensors)
        if full is not None:
            raise full from e
        raise
    return path


def _cooperative_group(group: Any) -> Any:
    """``group`` if it spans more than one rank, else None (this process writes alone)."""
    if group is None:
        return None
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        raise ValueError("process_group: torch.distributed is not initialized. HINT: pass "
                         "process_group=None to save from this process alone.")
    return group if dist.get_world_size(group) > 1 else None


def _save_together(path: Path, group: Any, tensors: dict[str, torch.Tensor], meta_json: Any,
                   manifest: dict[str, Any]) -> Path:
    """Every rank writes its share with DCP; rank 0 writes the rest and renames."""
    import torch.distributed as dist

    main = dist.get_rank(group) == 0
    box = [os.getpid()]  # one temporary directory for all ranks: rank 0's
    dist.broadcast_object_list(box, src=dist.get_global_rank(group, 0), group=group)
    tmp = path.parent / f".tmp-{path.name}-{box[0]}"
    if main:
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
    dist.barrier(group=group)  # the directory is ready for every rank's files
    try:
        _dcp_save(tensors, tmp, group)
        if main:
            _finish(path, tmp, meta_json, manifest)
    except BaseException as e:
        if main:
            shutil.rmtree(tmp, ignore_errors=True)
        full = _disk_full(e, path, tensors)
        if full is not None:
            raise full from e
        raise
    finally:
        dist.barrier(group=group)  # complete (or failed) on every rank before any goes on
    if not (path / _MANIFEST).exists():
        raise CheckpointError(f"checkpoint.save: rank 0 did not complete {str(path)!r}; see "
                              "its error.")
    return path


def _finish(path: Path, tmp: Path, meta_json: Any, manifest: dict[str, Any]) -> None:
    """meta.json, the manifest (last: it marks a complete write), then the rename."""
    try:
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
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


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
        raise TypeError(f"meta: expected a dict or None, got {describe(meta)}. "
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
                f"{describe(leaf)}. HINT: keep other objects out of the state (as static "
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
                    f"a tensor, got {describe(obj)}. HINT: convert it, e.g. float(x), "
                    "list(x), torch.as_tensor(x), or obj.state_dict() for a callback.")


def _spec(t: torch.Tensor) -> dict[str, Any]:
    return {"shape": list(t.shape), "dtype": str(t.dtype).removeprefix("torch.")}
