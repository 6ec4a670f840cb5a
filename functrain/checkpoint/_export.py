"""Weights-only export: a model's params and buffers as a ``state_dict``, optionally one
safetensors file, for inference and sharing."""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from .._errors import describe
from .._version import __version__
from ._format import CheckpointError, _fsync_dir
from ._save import _check_storable


def export_weights(state: Any, path: str | os.PathLike[str] | None = None
                   ) -> dict[str, torch.Tensor]:
    """The weights of ``state`` (params *and* buffers, e.g. BatchNorm statistics) as a
    ``state_dict``: ready for ``model.load_state_dict(...)``; optionally also written to one
    safetensors file.

    For inference and sharing: no optimizer state, no key, no step. With a
    `functrain.TrainState` that knows its module, the names and their order are the module's
    ``state_dict()``'s (tied weights under each of their names, non-persistent buffers left
    out), so ``load_state_dict`` with ``strict=True`` takes it; frozen parameters (which
    ``TrainState.create`` keeps among the buffers) come back under their names too.

    Args:
        state: a `functrain.TrainState` (or any object with ``params`` and ``buffers``
            dicts), or a dict ``{"params": ..., "buffers": ...}``.
        path: if given, also write the weights there as safetensors, atomically (needs the
            optional ``safetensors`` package; read back with `load_params` or
            `functrain.checkpoint.load_weights`).

    Returns:
        ``{name: tensor}``, detached copies on the CPU.

    Raises:
        TypeError: ``state`` holds no params dict, or an entry is not a tensor; names it.
        ImportError: ``path`` is given and ``safetensors`` is not installed.

    Example:
        >>> import torch, functrain as ft
        >>> model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2))
        >>> state = ft.TrainState.create(model, ft.optim.sgd(0.1))
        >>> weights = ft.checkpoint.export_weights(state)
        >>> "1.running_mean" in weights
        True
        >>> fresh = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2))
        >>> fresh.load_state_dict(weights)
        <All keys matched successfully>
    """
    if isinstance(state, Mapping):
        params, buffers, module = state.get("params"), state.get("buffers", {}), None
    else:
        params, buffers = getattr(state, "params", None), getattr(state, "buffers", {})
        module = getattr(state, "module", None)
    if not isinstance(params, Mapping) or not isinstance(buffers, Mapping):
        raise TypeError(f"state: expected a TrainState or a dict with 'params' (and "
                        f"'buffers'), got {describe(state)}. HINT: export_weights(state) "
                        "after fit; a bare dict of tensors is written by export_params.")
    flat = {**buffers, **params}
    for k, v in flat.items():
        if not isinstance(k, str) or not isinstance(v, torch.Tensor):
            where = "params" if k in params else "buffers"
            raise TypeError(f"state.{where}[{k!r}]: expected a tensor under a str key, got "
                            f"{describe(v)}.")
    if isinstance(module, torch.nn.Module):
        flat = _as_state_dict(module, flat)
    weights = {k: _check_storable(f"weights[{k!r}]", v).detach().to("cpu", copy=True)
               for k, v in flat.items()}
    if path is not None:
        _write_safetensors(path, weights)
    return weights


def _as_state_dict(module: torch.nn.Module,
                   flat: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``flat`` (named as `split_module` names: each tensor once) under the names and in the
    order of ``module.state_dict()`` (a tied tensor under each of its names)."""
    first: dict[int, str] = {}  # a module tensor -> the name split_module gave it
    for name, t in (*module.named_parameters(), *module.named_buffers()):
        first.setdefault(id(t), name)
    out = {}
    for name, t in module.state_dict(keep_vars=True).items():
        source = first.get(id(t), name)
        if source in flat:
            out[name] = flat[source]
    return out


def export_params(path: str | os.PathLike[str], params: Mapping[str, torch.Tensor]) -> Path:
    """Deprecated: write ``params`` (name -> tensor) to one safetensors file, atomically.

    It writes only what it is given, and ``state.params`` lacks the buffers (BatchNorm
    statistics): use `export_weights` (``export_weights(state, path)``), which writes params
    and buffers. Warns ``DeprecationWarning``.

    Args:
        path: the file to write (conventionally ``*.safetensors``); replaced if it exists.
        params: a flat dict of tensors; copied to the CPU.

    Returns:
        ``path`` as a ``Path``.

    Raises:
        ImportError: if ``safetensors`` is not installed.
        TypeError: if ``params`` is not a flat dict of str -> tensor; names the entry.

    Example:
        >>> import importlib.util, tempfile, warnings, torch, functrain as ft
        >>> with tempfile.TemporaryDirectory() as d, warnings.catch_warnings():
        ...     warnings.simplefilter("ignore", DeprecationWarning)
        ...     if importlib.util.find_spec("safetensors"):
        ...         _ = ft.checkpoint.export_params(f"{d}/w.safetensors", {"w": torch.ones(2)})
    """
    warnings.warn("functrain.checkpoint.export_params is deprecated: it writes only the dict "
                  "it is given, and state.params lacks the buffers (BatchNorm statistics). "
                  "HINT: functrain.checkpoint.export_weights(state, path) writes params and "
                  "buffers.", DeprecationWarning, stacklevel=2)
    if not isinstance(params, Mapping):
        raise TypeError(f"params: expected a dict of str -> tensor, got {describe(params)}."
                        " HINT: pass state.params.")
    for k, v in params.items():
        if not isinstance(k, str) or not isinstance(v, torch.Tensor):
            raise TypeError(f"params[{k!r}]: expected a tensor under a str key, got "
                            f"{describe(v)}. HINT: pass a flat dict such as state.params.")
    return _write_safetensors(path, params)


def _write_safetensors(path: str | os.PathLike[str],
                       weights: Mapping[str, torch.Tensor]) -> Path:
    """Write ``weights`` to one safetensors file, atomically (tied tensors as copies)."""
    st = _import_safetensors()
    tensors: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    for k, v in weights.items():
        v = _check_storable(f"weights[{k!r}]", v).to("cpu").contiguous()
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
    """Read a safetensors file (e.g. from `export_weights`) as a dict of tensors.

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
        ...         _ = ft.checkpoint.export_weights({"params": {"w": torch.ones(2)}},
        ...                                          f"{d}/w.safetensors")
        ...         assert torch.equal(ft.checkpoint.load_params(f"{d}/w.safetensors")["w"],
        ...                            torch.ones(2))
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
        raise ImportError("writing or reading a .safetensors file (export_weights with a path, "
                          "load_params) needs the optional package safetensors, which is not "
                          "installed. HINT: pip install safetensors") from None
    return safetensors.torch
