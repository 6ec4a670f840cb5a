"""After training: load a checkpoint's weights into a plain ``nn.Module``, and find a run's best
checkpoint.

`load_weights` needs no optimizer and no `functrain.TrainState`: it reads the params and buffers
(BatchNorm statistics included) of a checkpoint directory, or of a weights-only safetensors
file, into the module's own tensors. `best` ranks a run's checkpoints by a metric they recorded,
so nobody parses ``best-step_000000120-val_loss=0.1234`` by hand.

Example:
    >>> import tempfile, torch, functrain as ft
    >>> model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    >>> state = ft.TrainState.create(model, ft.optim.adamw(1e-3))
    >>> with tempfile.TemporaryDirectory() as d:
    ...     _ = ft.checkpoint.save(f"{d}/ckpt", state)
    ...     fresh = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    ...     fresh = load_weights(f"{d}/ckpt", fresh)
    >>> torch.equal(fresh[0].weight, model[0].weight)
    True
"""

from __future__ import annotations

import ast
import json
import math
import os
import re
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .._errors import check_choice, describe
from ._dcp import _dcp_load
from ._export import load_params
from ._format import CheckpointError
from ._restore import _dtype, verify

__all__ = ["best", "load_weights"]


# ---------------------------------------------------------------------------------------------
# load_weights


# "state.params['fc.weight']" (a TrainState) or "state['params']['fc.weight']" (a dict state)
_WEIGHT_PATH = re.compile(r"state(?:\.(params|buffers)|\['(params|buffers)'\])\[(.+)\]")


def read_weights(path: Path) -> dict[str, dict[str, torch.Tensor]]:
    """The params and buffers of the checkpoint directory ``path``, ``{"params": {name:
    tensor}, "buffers": {...}}`` on the CPU, read after verifying its checksums: only those
    leaves are read (not the optimizer state), whatever number of ranks wrote it.

    Raises:
        functrain.checkpoint.CheckpointError: ``path`` is not an intact checkpoint, or holds
            neither params nor buffers.
    """
    manifest = verify(path)
    like: dict[str, torch.Tensor] = {}
    where: dict[str, tuple[str, str]] = {}
    for rec in manifest["leaves"]:
        m = _WEIGHT_PATH.fullmatch(rec["path"])
        if not (m and "dtype" in rec):
            continue
        try:
            name = ast.literal_eval(m.group(3))
        except (ValueError, SyntaxError):
            continue
        if isinstance(name, str):
            like[rec["path"]] = torch.empty(rec["shape"], dtype=_dtype(rec["dtype"]),
                                            device="meta")
            where[rec["path"]] = (m.group(1) or m.group(2), name)
    if not like:
        raise CheckpointError(
            f"checkpoint {str(path)!r}: expected a state with params (a TrainState or a dict "
            "with 'params'), got none among its leaves. HINT: load other pytrees with "
            "functrain.checkpoint.restore(path, like=...).")
    loaded = _dcp_load(path, like, manifest)
    out: dict[str, dict[str, torch.Tensor]] = {"params": {}, "buffers": {}}
    for leaf, (kind, name) in where.items():
        out[kind][name] = loaded[leaf]
    return out


def load_weights(path: str | os.PathLike[str], module: nn.Module, *,
                 strict: bool = True) -> nn.Module:
    """Copy the params and buffers saved at ``path`` into ``module``'s own tensors; return it.

    For inference after training, with no optimizer and no train state to rebuild: ``path``
    is a checkpoint directory (`functrain.checkpoint.save`, `functrain.Checkpointing`,
    `functrain.callbacks.ModelCheckpoint`, `best`) or a weights-only safetensors file
    (`functrain.checkpoint.export_weights`). Names are the module's qualified names
    (``"0.weight"``, ``"bn.running_mean"``), as `functrain.split_module` made them. Values are
    copied into the module's tensors, keeping their device and dtype (a bfloat16 checkpoint
    loads into a float32 model).

    A checkpoint directory is verified (checksums), then only its params and buffers are
    read (not the optimizer state).

    Args:
        path: a checkpoint directory or a ``.safetensors`` file.
        module: the model, built as for training (its current values are overwritten).
        strict: require that the saved names and the module's names be the same; with
            ``False``, names only one side has are skipped. Shapes must match either way.

    Returns:
        ``module``, with the saved weights.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        functrain.checkpoint.CheckpointError: ``path`` is not an intact checkpoint.
        KeyError: (``strict``) names missing from the checkpoint or from the module; lists some.
        ValueError: a saved tensor's shape differs from the module's; names it.

    Example:
        >>> import tempfile, torch, functrain as ft
        >>> state = ft.TrainState.create(torch.nn.Linear(2, 1), ft.optim.sgd(0.1))
        >>> with tempfile.TemporaryDirectory() as d:
        ...     _ = ft.checkpoint.save(f"{d}/c", state.replace(params={
        ...         k: v + 1 for k, v in state.params.items()}))
        ...     model = load_weights(f"{d}/c", torch.nn.Linear(2, 1))
        >>> torch.equal(model.bias.detach(), state.params["bias"] + 1)
        True
    """
    if not isinstance(module, nn.Module):
        raise TypeError(f"module: expected a torch.nn.Module, got {describe(module)}.")
    path = Path(path)
    if path.is_file():
        flat = load_params(path)
        names = dict(module.named_parameters())
        params = {k: v for k, v in flat.items() if k in names}
        buffers = {k: v for k, v in flat.items() if k not in params}
        weights = {"params": params, "buffers": buffers}
    else:
        weights = read_weights(path)
    targets = {"params": dict(module.named_parameters()), "buffers": dict(module.named_buffers())}
    if strict:
        for kind in ("params", "buffers"):
            missing = sorted(set(targets[kind]) - set(weights[kind]))
            extra = sorted(set(weights[kind]) - set(targets[kind]))
            if missing or extra:
                what = (f"missing {_some(missing)}" if missing else "") + (
                    "; " if missing and extra else "") + (
                    f"unexpected {_some(extra)}" if extra else "")
                raise KeyError(
                    f"load_weights: expected the {kind} of {type(module).__name__} in "
                    f"{str(path)!r}, got {what}. HINT: build the module as it was trained, or "
                    "pass strict=False to load the names both have.")
    with torch.no_grad():
        for kind in ("params", "buffers"):
            for name, target in targets[kind].items():
                if name not in weights[kind]:
                    continue
                value = weights[kind][name]
                if value.shape != target.shape:
                    raise ValueError(
                        f"{kind}[{name!r}]: expected shape {tuple(target.shape)} (the "
                        f"module's), got {tuple(value.shape)} in {str(path)!r}. HINT: build the "
                        "module with the configuration it was trained with.")
                target.copy_(value)
    return module


def _some(names: list[str]) -> str:
    shown = ", ".join(repr(n) for n in names[:5])
    return shown + (f" and {len(names) - 5} more" if len(names) > 5 else "")


# ---------------------------------------------------------------------------------------------
# best


_STEP_DIR = re.compile(r"step_(\d+)")
_NONFINITE = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}


def _number(v: Any) -> float | None:
    if isinstance(v, str):
        v = _NONFINITE.get(v)
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    return float(v)


def best(run_dir: str | os.PathLike[str], monitor: str, mode: str = "min") -> Path:
    """The checkpoint of a run with the best recorded ``monitor`` value.

    Looks at every complete checkpoint in ``run_dir/checkpoints`` (or in ``run_dir`` itself
    when it has no ``checkpoints`` folder). A checkpoint's value of ``monitor`` is the one it
    recorded (`functrain.callbacks.ModelCheckpoint` stores the loop's metrics with each
    checkpoint) or, for a periodic checkpoint of `functrain.Checkpointing`, the
    value logged at its step in the run's ``metrics.jsonl``. NaN never wins; among ties the
    earliest step does. The winner is verified (checksums); a corrupt one is skipped with a
    warning.

    Args:
        run_dir: the run directory (``fit``'s ``run_dir``) or its checkpoint folder.
        monitor: the metric's full name, e.g. ``"val/loss"``, ``"val/accuracy"``.
        mode: ``"min"`` or ``"max"``.

    Returns:
        The checkpoint directory, for `load_weights` or `functrain.checkpoint.restore`.

    Raises:
        FileNotFoundError: ``run_dir`` does not exist.
        ValueError: no intact checkpoint recorded ``monitor``; the message lists the metrics
            the checkpoints did record.

    Example:
        >>> import tempfile, torch, functrain as ft
        >>> state = {"w": torch.zeros(1)}
        >>> with tempfile.TemporaryDirectory() as d:
        ...     for step, loss in [(10, 0.5), (20, 0.25), (30, 0.375)]:
        ...         _ = ft.checkpoint.save(f"{d}/checkpoints/ckpt-{step}", state, meta={
        ...             "step": step, "metrics": {"val/loss": loss}})
        ...     best(d, "val/loss").name
        'ckpt-20'
    """
    if not isinstance(monitor, str):
        raise TypeError(f"monitor: expected a metric name such as 'val/loss', got "
                        f"{describe(monitor)}.")
    check_choice("mode", mode, ("min", "max"))
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run_dir: expected a run directory, got {str(run_dir)!r}, "
                                "which does not exist or is not a directory.")
    folder = run_dir / "checkpoints" if (run_dir / "checkpoints").is_dir() else run_dir
    # metrics.jsonl sits in the run directory, beside its checkpoint folder
    logged = _logged_values(folder.parent if folder == run_dir else run_dir, monitor)
    candidates: list[tuple[float, int, Path]] = []
    seen: set[str] = set()
    for ckpt in sorted(p for p in folder.iterdir() if (p / "manifest.json").is_file()):
        meta = _read_meta(ckpt)
        metrics = meta.get("metrics") if isinstance(meta.get("metrics"), dict) else {}
        seen.update(metrics)
        step = meta.get("step")
        if not isinstance(step, int):
            m = _STEP_DIR.fullmatch(ckpt.name)
            step = int(m.group(1)) if m else None
        value = _number(metrics.get(monitor))
        if value is None and step is not None:
            value = logged.get(step)
        if value is None or math.isnan(value):
            continue
        candidates.append((value if mode == "min" else -value, -1 if step is None else step,
                           ckpt))
    for _, _, ckpt in sorted(candidates, key=lambda c: (c[0], c[1])):
        try:
            verify(ckpt)
        except CheckpointError as e:
            warnings.warn(f"best: skipping {e}", stacklevel=2)
            continue
        return ckpt
    seen.discard(monitor)
    recorded = f"they recorded {sorted(seen)}" if seen else "none recorded any metric"
    raise ValueError(
        f"best: expected a checkpoint in {str(folder)!r} that recorded {monitor!r}, got none "
        f"({recorded}). HINT: ModelCheckpoint({monitor!r}) records it with each checkpoint; "
        "periodic checkpoints are matched to metrics.jsonl by step.")


def _read_meta(ckpt: Path) -> dict[str, Any]:
    try:
        meta = json.loads((ckpt / "meta.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return {}
    return meta if isinstance(meta, dict) else {}


def _logged_values(run_dir: Path, monitor: str) -> dict[int, float]:
    """``{step: value}`` of ``monitor`` in ``run_dir/metrics.jsonl`` (the last row per step)."""
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return {}
    out: dict[int, float] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue  # a blank line, or one cut short by a crash
        if not isinstance(row, dict):
            continue
        value = _number(row.get(monitor))
        if isinstance(row.get("step"), int) and value is not None:
            out[row["step"]] = value
    return out
