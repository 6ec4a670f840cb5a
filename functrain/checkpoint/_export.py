"""Weights-only export: one safetensors file of parameters, for inference and sharing."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from .._errors import describe
from .._version import __version__
from ._format import CheckpointError, _fsync_dir
from ._save import _check_storable

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
        raise TypeError(f"params: expected a dict of str -> tensor, got {describe(params)}."
                        " HINT: pass state.params.")
    tensors: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    for k, v in params.items():
        if not isinstance(k, str) or not isinstance(v, torch.Tensor):
            raise TypeError(f"params[{k!r}]: expected a tensor under a str key, got "
                            f"{describe(v)}. HINT: pass a flat dict such as state.params.")
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
