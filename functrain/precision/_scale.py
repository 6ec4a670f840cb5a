"""Loss scales as values: `DynamicLossScale` (fp16), `NoOpLossScale`, and `all_finite`.

A loss scale is a small immutable pytree that travels in the train state
(``state.extras["loss_scale"]``). Its bookkeeping is branch-free (``torch.where``), so a step that
scales, checks and adjusts compiles into one graph, and its numbers live in 0-d tensors, so a
changing scale never recompiles the step. The update rule is `torch.amp.GradScaler`'s, to the bit.
"""

from __future__ import annotations

import math
import struct
from typing import Any

import optree
import torch

from .. import tree as _tree
from .._errors import check_int, check_number
from ..tree import NAMESPACE, register_fields

__all__ = ["DynamicLossScale", "NoOpLossScale", "all_finite"]


def all_finite(tree: Any) -> torch.Tensor:
    """Return a 0-d bool tensor: are all elements of all tensor leaves of ``tree`` finite?

    Computed on the device, with no host sync (nothing reads the result), so it can gate an
    update with ``torch.where`` inside a compiled step. An empty tree is finite.

    Example:
        >>> import torch
        >>> from functrain import precision as mp
        >>> mp.all_finite({"w": torch.ones(3), "b": torch.zeros(2)})
        tensor(True)
        >>> mp.all_finite({"w": torch.tensor([1.0, float("nan")])})
        tensor(False)
    """
    flags = [torch.isfinite(x).all() for x in _tree.leaves(tree) if isinstance(x, torch.Tensor)]
    if not flags:
        return torch.ones((), dtype=torch.bool)
    return torch.stack(flags).all() if len(flags) > 1 else flags[0]


def _f32_exact(factor: float) -> bool:
    try:
        return struct.unpack("f", struct.pack("f", factor))[0] == factor
    except OverflowError:
        return False


def _times(scale: torch.Tensor, factor: float, f32_exact: bool) -> torch.Tensor:
    """``float32(scale * factor)`` computed as GradScaler does: the product in float64, rounded
    once. When ``factor`` is exactly a float32 (2.0, 0.5, ...) the float32 product is that same
    rounded value, so the float64 detour (unsupported on some devices) is skipped."""
    if f32_exact:
        return scale * factor
    return (scale.double() * factor).to(scale.dtype)


class DynamicLossScale:
    """fp16 loss scaling as an immutable value: scale the loss, unscale the gradients, adjust.

    The rule is `torch.amp.GradScaler`'s: if the gradients have an inf or NaN, the step is
    skipped and the scale is multiplied by ``backoff_factor``; after ``growth_interval``
    finite steps in a row it is multiplied by ``growth_factor`` (unless that overflows
    float32). The trajectory of ``loss_scale`` equals GradScaler's bit for bit (tested).

    Leaves (0-d tensors, on the device, in the state): ``loss_scale`` (float32),
    ``growth_tracker`` (int64, finite steps since the last change) and ``skipped_steps``
    (int64, steps skipped so far). The four hyperparameters are static Python numbers.

    Not a ``dataclasses.dataclass``: the runner's donation walk treats every dataclass field
    as a tensor, and the hyperparameters are not tensors. It behaves like a frozen one:
    attributes cannot be set; `adjust` returns a new value.

    Args:
        init_scale: the first scale, > 0 (GradScaler's default, 2**16).
        growth_factor: multiplies the scale after ``growth_interval`` finite steps, > 1.
        backoff_factor: multiplies the scale after a non-finite step, in (0, 1).
        growth_interval: finite steps in a row before the scale grows, a positive int.
        device: where the leaves are created (the runner moves them anyway).

    Raises:
        ValueError / TypeError: for a hyperparameter out of range, naming it.

    Example:
        >>> import torch
        >>> from functrain import precision as mp
        >>> ls = mp.DynamicLossScale(init_scale=8.0, growth_interval=2)
        >>> ls.scale(torch.tensor(0.5))
        tensor(4.)
        >>> ls.unscale({"w": torch.tensor([8.0])})
        {'w': tensor([1.])}
        >>> for finite in (True, True, False):
        ...     ls = ls.adjust(torch.tensor(finite))
        ...     print(ls.loss_scale.item(), ls.growth_tracker.item(), ls.skipped_steps.item())
        8.0 1 0
        16.0 0 0
        8.0 0 1
    """

    __slots__ = ("loss_scale", "growth_tracker", "skipped_steps", "init_scale",
                 "growth_factor", "backoff_factor", "growth_interval", "_exact")

    loss_scale: torch.Tensor
    growth_tracker: torch.Tensor
    skipped_steps: torch.Tensor
    init_scale: float
    growth_factor: float
    backoff_factor: float
    growth_interval: int

    def __init__(self, init_scale: float = 2.0**16, growth_factor: float = 2.0,
                 backoff_factor: float = 0.5, growth_interval: int = 2000, *,
                 device: torch.device | str | None = None) -> None:
        check_number("init_scale", init_scale, low=0.0, low_open=True)
        if not math.isfinite(float(torch.tensor(float(init_scale), dtype=torch.float32))):
            raise ValueError(f"init_scale: expected a number that fits in float32, got "
                             f"{init_scale!r}.")
        check_number("growth_factor", growth_factor, low=1.0, low_open=True)
        check_number("backoff_factor", backoff_factor, low=0.0, high=1.0, low_open=True,
                     high_open=True)
        check_int("growth_interval", growth_interval, minimum=1)
        leaves = (torch.tensor(float(init_scale), dtype=torch.float32, device=device),
                  torch.zeros((), dtype=torch.int64, device=device),
                  torch.zeros((), dtype=torch.int64, device=device))
        static = (float(init_scale), float(growth_factor), float(backoff_factor),
                  int(growth_interval),
                  (_f32_exact(float(growth_factor)), _f32_exact(float(backoff_factor))))
        _fill(self, leaves, static)

    @classmethod
    def _make(cls, leaves: Any, static: tuple[Any, ...]) -> DynamicLossScale:
        # No validation, no new tensors: used by unflatten and adjust (also while tracing).
        obj = cls.__new__(cls)
        _fill(obj, leaves, static)
        return obj

    def _static(self) -> tuple[Any, ...]:
        return (self.init_scale, self.growth_factor, self.backoff_factor, self.growth_interval,
                self._exact)

    def scale(self, tree: Any) -> Any:
        """Multiply the loss (or every tensor leaf of ``tree``) by the loss scale.

        A low-precision 0-d loss is promoted to float32, as ``GradScaler.scale`` does.

        Example:
            >>> import torch
            >>> from functrain import precision as mp
            >>> mp.DynamicLossScale(init_scale=1024.0).scale(torch.tensor(0.5, dtype=torch.float16))
            tensor(512.)
        """
        return _tree.map(lambda x: x * self.loss_scale if isinstance(x, torch.Tensor) else x, tree)

    def unscale(self, tree: Any) -> Any:
        """Divide every tensor leaf of ``tree`` (the gradients) by the loss scale.

        Each leaf keeps its dtype; float16/bfloat16 leaves are multiplied in float32 (as
        GradScaler's kernel does), so a tiny ``1 / scale`` never rounds to zero.

        Example:
            >>> import torch
            >>> from functrain import precision as mp
            >>> mp.DynamicLossScale(init_scale=4.0).unscale({"w": torch.tensor([2.0, 8.0])})
            {'w': tensor([0.5000, 2.0000])}
        """
        inv = torch.reciprocal(self.loss_scale)

        def one(x: Any) -> Any:
            if not isinstance(x, torch.Tensor) or not x.is_floating_point():
                return x
            wide = torch.promote_types(x.dtype, torch.float32)
            return (x.to(wide) * inv).to(x.dtype)

        return _tree.map(one, tree)

    def adjust(self, grads_finite: torch.Tensor) -> DynamicLossScale:
        """Return the loss scale for the next step, given whether this step's grads were finite.

        Branch-free (``torch.where``): no host sync, one compiled graph for every outcome.

        Args:
            grads_finite: a 0-d bool tensor, e.g. ``all_finite(grads)`` (or a Python bool).

        Returns:
            A new `DynamicLossScale`: backed off and ``skipped_steps + 1`` if not finite;
            else grown every ``growth_interval`` finite steps in a row.

        Example:
            >>> import torch
            >>> from functrain import precision as mp
            >>> ls = mp.DynamicLossScale(init_scale=2.0**10).adjust(torch.tensor(False))
            >>> ls.loss_scale, ls.skipped_steps
            (tensor(512.), tensor(1))
        """
        if isinstance(grads_finite, torch.Tensor):
            finite = grads_finite.to(torch.bool)
        else:  # a Python bool (``~True`` would be -2)
            finite = torch.tensor(bool(grads_finite), device=self.loss_scale.device)
        tracker = self.growth_tracker + 1
        grow = finite & (tracker >= self.growth_interval)
        grown = _times(self.loss_scale, self.growth_factor, self._exact[0])
        kept = torch.where(grow & torch.isfinite(grown), grown, self.loss_scale)
        backed_off = _times(self.loss_scale, self.backoff_factor, self._exact[1])
        scale = torch.where(finite, kept, backed_off)
        tracker = torch.where(finite & ~grow, tracker, torch.zeros_like(tracker))
        skipped = self.skipped_steps + (~finite).to(self.skipped_steps.dtype)
        return self._make((scale, tracker, skipped), self._static())

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"DynamicLossScale is immutable: cannot set {name!r}. "
                             "HINT: adjust(grads_finite) returns the next loss scale.")

    def __delattr__(self, name: str) -> None:
        self.__setattr__(name, None)

    def __repr__(self) -> str:
        return (f"DynamicLossScale(loss_scale={self.loss_scale!r}, "
                f"growth_tracker={self.growth_tracker!r}, skipped_steps={self.skipped_steps!r}, "
                f"growth_factor={self.growth_factor}, backoff_factor={self.backoff_factor}, "
                f"growth_interval={self.growth_interval})")


def _fill(obj: DynamicLossScale, leaves: Any, static: tuple[Any, ...]) -> None:
    for name, value in zip(_LEAVES + _STATIC, (*leaves, *static)):
        object.__setattr__(obj, name, value)


_LEAVES = ("loss_scale", "growth_tracker", "skipped_steps")
# (static; ``_exact``: are the growth and backoff factors exactly float32 numbers?)
_STATIC = ("init_scale", "growth_factor", "backoff_factor", "growth_interval", "_exact")


class NoOpLossScale:
    """The loss scale of policies that do not scale (``"32"``, ``"bf16-mixed"``, ``"bf16-true"``).

    Same interface as `DynamicLossScale`, doing nothing: ``scale`` and ``unscale`` return
    their input, ``adjust`` returns ``self``. A pytree with no leaves. With it,
    `functrain.precision.apply_gradients` never skips a step (non-finite gradients reach the
    optimizer, as in plain PyTorch without a GradScaler).

    Example:
        >>> import torch
        >>> from functrain import precision as mp
        >>> ls = mp.NoOpLossScale()
        >>> ls.scale(torch.tensor(3.0)), ls.adjust(torch.tensor(False)) is ls, ls.loss_scale
        (tensor(3.), True, tensor(1.))
    """

    __slots__ = ()

    @property
    def loss_scale(self) -> torch.Tensor:
        """Always 1.0 (a 0-d float32 tensor, on the CPU)."""
        return torch.ones((), dtype=torch.float32)

    @property
    def skipped_steps(self) -> torch.Tensor:
        """Always 0 (a 0-d int64 tensor, on the CPU)."""
        return torch.zeros((), dtype=torch.int64)

    def scale(self, tree: Any) -> Any:
        """Return ``tree`` unchanged."""
        return tree

    def unscale(self, tree: Any) -> Any:
        """Return ``tree`` unchanged."""
        return tree

    def adjust(self, grads_finite: torch.Tensor) -> NoOpLossScale:
        """Return ``self``."""
        del grads_finite
        return self

    def __repr__(self) -> str:
        return "NoOpLossScale()"


optree.register_pytree_node(
    DynamicLossScale,
    lambda s: ((s.loss_scale, s.growth_tracker, s.skipped_steps), s._static(), _LEAVES),
    lambda static, leaves: DynamicLossScale._make(leaves, static),
    path_entry_type=optree.GetAttrEntry,
    namespace=NAMESPACE,
)
optree.register_pytree_node(
    NoOpLossScale,
    lambda s: ((), None, ()),
    lambda _, children: NoOpLossScale(),
    path_entry_type=optree.GetAttrEntry,
    namespace=NAMESPACE,
)
# The data fields of these nodes, for the walks that run while tracing (`functrain.tree.leaves`,
# the runner's write-back of a donated state); set here because they are not dataclasses.
register_fields(DynamicLossScale, _LEAVES,
                lambda node, values: DynamicLossScale._make(tuple(values[k] for k in _LEAVES),
                                                            node._static()))
register_fields(NoOpLossScale, ())
