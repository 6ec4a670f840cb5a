"""`save`: a pytree and a meta dict to a checkpoint directory, atomically."""

from __future__ import annotations

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
    _fsync_dir,
    _sha256_all,
    _write_json,
)

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
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


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
