"""The `Metric` base class: an immutable pytree of tensors with empty / merge / compute."""

from __future__ import annotations

import dataclasses
from typing import Any, TypeVar

import optree
import torch

from .._errors import describe
from ..tree import NAMESPACE, data_fields, register_fields

M = TypeVar("M", bound="Metric")


def _flatten(m: Metric) -> tuple[tuple[Any, ...], None, tuple[str, ...]]:
    names = data_fields(m)
    if names is None:  # first flatten, outside of tracing: dynamo cannot trace fields()
        names = tuple(f.name for f in dataclasses.fields(m))
        register_fields(type(m), names)
    return tuple(getattr(m, n) for n in names), None, names


class Metric:
    """Base class of metrics: an immutable dataclass of tensors that merges and computes.

    Subclasses are frozen dataclasses whose fields are tensors; each is registered as an optree
    pytree node under the ``"functrain"`` namespace when it is defined, so `functrain.tree`
    functions and ``torch.compile`` see through it. A subclass must implement ``empty``,
    ``merge`` and ``compute``, and its all-zeros value must be the identity of ``merge``
    (`empty_like` relies on it).

    Example:
        >>> import dataclasses, torch
        >>> @dataclasses.dataclass(frozen=True, eq=False)
        ... class Max(Metric):
        ...     value: torch.Tensor  # assumes values >= 0, so that zeros are "empty"
        ...     @classmethod
        ...     def empty(cls):
        ...         return cls(torch.zeros(()))
        ...     def merge(self, other):
        ...         return Max(torch.maximum(self.value, other.value))
        ...     def compute(self):
        ...         return self.value
        >>> Max(torch.tensor(2.0)).merge(Max(torch.tensor(3.0))).compute()
        tensor(3.)
    """

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        optree.register_pytree_node(
            cls,
            _flatten,
            lambda _, children: cls(*children),
            path_entry_type=optree.GetAttrEntry,
            namespace=NAMESPACE,
        )

    @classmethod
    def empty(cls: type[M], *args: Any, **kwargs: Any) -> M:
        """Return the identity of `merge` (all zeros for the built-in metrics)."""
        raise NotImplementedError(f"{cls.__name__}.empty is not implemented.")

    def merge(self: M, other: M) -> M:
        """Combine ``self`` with ``other`` (the newer value) into a value of the same type."""
        raise NotImplementedError(f"{type(self).__name__}.merge is not implemented.")

    def compute(self) -> torch.Tensor:
        """Return the metric's value as a 0-d tensor on its device, without a host sync."""
        raise NotImplementedError(f"{type(self).__name__}.compute is not implemented.")



def _tensor(x: Any, name: str) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x
    if isinstance(x, (bool, int, float)):
        return torch.as_tensor(x)
    raise TypeError(f"{name}: expected a tensor, got {describe(x)}.")


def _float(x: torch.Tensor) -> torch.Tensor:
    """Cast to a floating dtype of at least float32 (bf16/fp16 losses accumulate in float32)."""
    if x.is_floating_point():
        return x.to(torch.promote_types(x.dtype, torch.float32))
    return x.to(torch.float32)


def _zeros(dtype: torch.dtype, device: torch.device | str | None) -> torch.Tensor:
    # A fresh tensor per field: a runner that updates accumulators in place must never find
    # two fields aliasing one buffer.
    return torch.zeros((), dtype=dtype, device=device)
