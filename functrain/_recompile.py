"""The recompile guard: after warm-up, a new compile of the step is reported with its reason."""

from __future__ import annotations

import warnings
from typing import Any

import torch

from . import _compat
from . import tree as _tree

__all__ = ["RecompileError", "RecompileGuard"]


class RecompileError(RuntimeError):
    """The compiled step recompiled after warm-up while ``on_recompile="raise"``.

    Example:
        >>> import functrain as ft
        >>> issubclass(ft.RecompileError, RuntimeError)
        True
    """


def batch_signature(batch: Any) -> tuple[Any, ...]:
    """Each leaf's path, shape and dtype: what a compiled step specializes on."""
    return tuple((p, tuple(x.shape), x.dtype) if isinstance(x, torch.Tensor) else (p, None, x)
                 for p, x in _tree.leaves_with_path(batch, "batch"))


class RecompileGuard:
    """Remembers the batch shapes a step was compiled for and reports a recompile's reason.

    Args:
        on_recompile: ``"warn"``, ``"raise"`` (`RecompileError`) or ``"ignore"``.
        code_name: the compiled code object's name, to look up Dynamo's guard failures.
    """

    def __init__(self, on_recompile: str, code_name: str = "") -> None:
        self.on_recompile = on_recompile
        self.code_name = code_name
        self.signatures: list[tuple[Any, ...]] = []
        self.first_batch_len: int | None = None
        self.recompiles: list[tuple[int, str]] = []

    def first_batch(self, batch: Any, batch_len: int | None) -> None:
        """Record the first batch: its size, and its shapes as the first compile's."""
        self.first_batch_len = batch_len
        self.signatures.append(batch_signature(batch))

    def seen(self, batch: Any) -> bool:
        """Whether a batch of these shapes and dtypes was compiled for already."""
        return batch_signature(batch) in self.signatures

    def report(self, call: int, compiles: int, batch: Any, batch_len: int | None,
               fallback: str | None = None) -> None:
        """The step compiled again at ``call`` (compile number ``compiles``): record why, and
        warn or raise unless the batch is a smaller last batch (the documented extra compile)."""
        sig = batch_signature(batch)
        reason = None
        for old in self.signatures:
            diffs = [f"{p}: {tuple(a[1])} -> {tuple(b[1])}" if a[1] != b[1] else
                     f"{p}: dtype {a[2]} -> {b[2]}"
                     for a, b in zip(old, sig) for p in [a[0]] if a[1:] != b[1:]]
            if diffs and len(old) == len(sig):
                reason = "; ".join(diffs)
        self.signatures.append(sig)
        if reason is None:
            reason = (fallback or _compat.guard_failure_reason(self.code_name)
                      or "guards failed (state or step changed)")
        self.recompiles.append((call, reason))
        partial = (batch_len is not None and self.first_batch_len is not None
                   and batch_len < self.first_batch_len)
        if partial:
            return
        msg = f"functrain: the step recompiled (compile #{compiles}) at call {call}: {reason}."
        if self.on_recompile == "raise":
            raise RecompileError(msg + " HINT: keep batch shapes fixed (drop_last=True) and "
                                 "per-step values in the state as tensors.")
        if self.on_recompile == "warn":
            warnings.warn(msg, stacklevel=4)
