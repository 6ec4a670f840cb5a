"""What a state holds, in a few lines: `model_summary` (the table `fit` prints at the start) and
the concise one-line ``repr`` of a `functrain.TrainState` (`state_repr`)."""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import nn

from . import tree as _tree
from ._errors import describe

__all__ = ["model_summary", "state_repr"]


def _size(nbytes: int) -> str:
    """``1536`` -> ``'1.5 KiB'``."""
    value = float(nbytes)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{int(value)} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"  # pragma: no cover


def _tensors(tree: Any) -> list[torch.Tensor]:
    return [x for x in _tree.leaves(tree) if isinstance(x, torch.Tensor)]


def _totals(tree: Any) -> tuple[int, int, int]:
    """(tensors, elements, bytes) of the tensor leaves of ``tree``."""
    ts = _tensors(tree)
    return len(ts), sum(x.numel() for x in ts), sum(x.numel() * x.element_size() for x in ts)


def _tree_text(tree: Any) -> str:
    """``'6 tensors, 118,282 float32 (462.0 KiB, cpu)'`` for a pytree of tensors."""
    ts = _tensors(tree)
    if not ts:
        return "{}" if isinstance(tree, dict) and not tree else f"({describe(tree)})"
    dtypes = sorted({str(x.dtype).removeprefix("torch.") for x in ts})
    devices = sorted({str(x.device) for x in ts})
    n, numel, nbytes = _totals(tree)
    plural = "tensor" if n == 1 else "tensors"
    return (f"{n} {plural}, {numel:,} {'/'.join(dtypes)} ({_size(nbytes)}, "
            f"{'/'.join(devices)})")


def _scalar_text(x: torch.Tensor) -> str:
    if x.device.type == "meta" or torch.compiler.is_compiling():
        return describe(x)
    return repr(x.item())


def state_repr(state: Any) -> str:
    """A one-line description of a `functrain.TrainState` (or a subclass): 0-d fields by value,
    trees of tensors by count, elements, dtype, bytes and device; never every tensor.

    Reading ``step`` copies one number to the host (a repr is for people, not the hot loop).

    Example:
        >>> import torch, functrain as ft
        >>> state = ft.TrainState.create(torch.nn.Linear(3, 2), ft.optim.adam(1e-3), seed=0)
        >>> print(state_repr(state))  # doctest: +ELLIPSIS, +NORMALIZE_WHITESPACE
        TrainState(step=0, params=2 tensors, 8 float32 (32 B, cpu), buffers={},
                   opt_state=5 tensors, ...
    """
    if not dataclasses.is_dataclass(state):
        return repr(state)
    parts = []
    for f in dataclasses.fields(state):
        value = getattr(state, f.name)
        if f.metadata.get("static"):
            if value is None:
                continue
            text = type(value).__name__
        elif isinstance(value, torch.Tensor) and value.dim() == 0:
            text = _scalar_text(value)
        elif f.name == "rng" and isinstance(value, torch.Tensor):
            text = f"key{tuple(value.shape)}"
        elif isinstance(value, dict) and f.name == "extras":
            text = "{" + ", ".join(
                f"{k!r}: " + (_scalar_text(v) if isinstance(v, torch.Tensor) and v.dim() == 0
                              else _tree_text(v) if _tensors(v) else describe(v))
                for k, v in value.items()) + "}"
        else:
            text = _tree_text(value) if _tensors(value) or isinstance(value, dict) else (
                describe(value))
        parts.append(f"{f.name}={text}")
    return f"{type(state).__name__}({', '.join(parts)})"


def model_summary(state: Any, module: nn.Module | None = None) -> str:
    """A table of the model: parameters per top-level module, trainable or frozen, and the
    memory of params, buffers and optimizer state (what `functrain.fit` prints at the start).

    Counts come from the state's own tensors (``state.params``, ``state.buffers``,
    ``state.opt_state``), so they show what training holds, in its dtypes; the module gives the
    names and types of the rows. "Frozen" counts parameters whose ``requires_grad`` is False on
    the module. functrain differentiates whatever the step asks for, so freeze them in the
    optimizer as well (``ft.optim.multi_transform`` with ``ft.optim.set_to_zero()``), or leave
    them out of the gradient.

    Args:
        state: a `functrain.TrainState` (or anything with ``params``; ``buffers``,
            ``opt_state`` and ``module`` are used when present), or an ``nn.Module``.
        module: the module, when ``state`` has none.

    Returns:
        The table, as text.

    Raises:
        TypeError: ``state`` has no ``params`` and is not an ``nn.Module``.

    Example:
        >>> import torch, functrain as ft
        >>> model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.BatchNorm1d(8))
        >>> print(model_summary(ft.TrainState.create(model, ft.optim.adam(1e-3))))
          | Name | Type        | Params | Frozen
        0 | 0    | Linear      | 40     | 0
        1 | 1    | BatchNorm1d | 16     | 0
        params 56 (224 B): trainable 56, frozen 0
        buffers 3 tensors (72 B); optimizer state 113 (456 B)
    """
    if isinstance(state, nn.Module):
        module = module or state
        params, buffers = dict(state.named_parameters()), dict(state.named_buffers())
        opt_state = None
    elif hasattr(state, "params"):
        params, buffers = state.params, getattr(state, "buffers", {}) or {}
        opt_state = getattr(state, "opt_state", None)
        module = module or getattr(state, "module", None)
    else:
        raise TypeError(f"state: expected a TrainState (with params) or an nn.Module, got "
                        f"{describe(state)}.")
    frozen_names = ({n for n, p in module.named_parameters() if not p.requires_grad}
                    if module is not None else set())
    # `TrainState.create` keeps frozen parameters out of the optimizer's reach, in buffers:
    # they are still parameters of the model, counted as frozen ones.
    moved = {n: buffers[n] for n in frozen_names if n in buffers and n not in params}
    if moved:
        params = {**params, **moved}
        buffers = {n: b for n, b in buffers.items() if n not in moved}
    rows: list[tuple[str, str, int, int]] = []
    if module is not None:
        children = [(n, type(m).__name__) for n, m in module.named_children()]
        own = [n for n in params if "." not in n]
        if own:
            children.insert(0, ("(own)", type(module).__name__))
        for name, kind in children:
            names = (own if name == "(own)"
                     else [n for n in params if n.startswith(name + ".")])
            rows.append((name, kind, sum(params[n].numel() for n in names),
                         sum(params[n].numel() for n in names if n in frozen_names)))
    total = sum(p.numel() for p in params.values())
    frozen = sum(params[n].numel() for n in frozen_names if n in params)
    nbytes = sum(p.numel() * p.element_size() for p in params.values())
    lines = []
    if rows:
        header = ("", "Name", "Type", "Params", "Frozen")
        table = [header] + [(str(i), n, k, f"{c:,}", f"{f:,}") for i, (n, k, c, f)
                            in enumerate(rows)]
        widths = [max(len(r[j]) for r in table) for j in range(len(header))]
        lines += [" | ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in table]
    lines.append(f"params {total:,} ({_size(nbytes)}): trainable {total - frozen:,}, "
                 f"frozen {frozen:,}")
    nb, _, bbytes = _totals(buffers)
    text = f"buffers {nb} tensor{'s' if nb != 1 else ''} ({_size(bbytes)})"
    if opt_state is not None:
        _, onumel, obytes = _totals(opt_state)
        text += f"; optimizer state {onumel:,} ({_size(obytes)})"
    lines.append(text)
    return "\n".join(lines)
