"""Metrics as mergeable values, reduced on device and read on the host only when logged.

Modelled on CLU's ``metrics.py``. A metric is an immutable pytree of tensors with four parts:

- ``Metric.empty(...)``: the identity of ``merge``; every built-in metric's empty value is all
  zeros, so `empty_like` can build an accumulator of fixed structure before the first step;
- a constructor from model output (``Mean.from_value``, ``Accuracy.from_logits``, ...);
- ``merge(other)``: combine two values of the same type (``other`` is the newer one);
- ``compute()``: the 0-d result, as a tensor on the metric's device (no host sync).

All four run inside ``torch.compile(fullgraph=True)``: there is no ``.item()`` and no Python
``if`` on tensor values anywhere. A step returns a dict of metrics (a bare 0-d tensor counts as a
`Mean` of it); the runner folds them into a window accumulator with `merge_all` and, when it logs,
reads them all with *one* device-to-host transfer in `compute_all`.

Example:
    >>> import torch
    >>> from functrain import metrics
    >>> step_out = {"loss": torch.tensor(0.5),
    ...             "acc": metrics.Accuracy.from_logits(torch.eye(3), torch.tensor([0, 1, 0]))}
    >>> acc = metrics.empty_like(step_out)
    >>> acc = metrics.merge_all(acc, step_out)
    >>> acc = metrics.merge_all(acc, {"loss": torch.tensor(1.5),
    ...     "acc": metrics.Accuracy.from_logits(torch.eye(3), torch.tensor([0, 1, 2]))})
    >>> {k: round(v, 4) for k, v in metrics.compute_all(acc).items()}
    {'loss': 1.0, 'acc': 0.8333}

Writing your own metric: subclass `Metric` as a frozen dataclass whose fields are tensors, make
the all-zeros value the identity of ``merge``, and it is registered as a pytree automatically.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, TypeVar

import optree
import torch

from . import tree as _tree
from .tree import NAMESPACE, TreeMismatchError, data_fields, register_fields

__all__ = [
    "Accuracy",
    "Last",
    "Mean",
    "Metric",
    "Std",
    "Sum",
    "as_metric",
    "compute_all",
    "compute_all_tensors",
    "empty_like",
    "merge_all",
    "to_metrics",
]

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


def _describe(x: Any) -> str:
    if isinstance(x, torch.Tensor):
        return f"tensor of shape {tuple(x.shape)}" if x.ndim else f"0-d tensor of dtype {x.dtype}"
    return type(x).__name__


def _tensor(x: Any, name: str) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x
    if isinstance(x, (bool, int, float)):
        return torch.as_tensor(x)
    raise TypeError(f"{name}: expected a tensor, got {_describe(x)}.")


def _float(x: torch.Tensor) -> torch.Tensor:
    """Cast to a floating dtype of at least float32 (bf16/fp16 losses accumulate in float32)."""
    if x.is_floating_point():
        return x.to(torch.promote_types(x.dtype, torch.float32))
    return x.to(torch.float32)


def _zeros(dtype: torch.dtype, device: torch.device | str | None) -> torch.Tensor:
    # A fresh tensor per field: a runner that updates accumulators in place must never find
    # two fields aliasing one buffer.
    return torch.zeros((), dtype=dtype, device=device)


@dataclasses.dataclass(frozen=True, eq=False)
class Mean(Metric):
    """A (weighted) mean: ``compute() = total / weight``; empty is ``nan`` when computed.

    Attributes:
        total: sum of ``value * weight``.
        weight: sum of the weights.

    Example:
        >>> import torch
        >>> a = Mean.from_value(torch.tensor(1.0), weight=3)   # a batch of 3 with mean loss 1
        >>> b = Mean.from_value(torch.tensor(2.0), weight=1)   # a batch of 1 with mean loss 2
        >>> a.merge(b).compute()
        tensor(1.2500)
        >>> Mean.from_value(torch.tensor([1.0, 2.0, 6.0])).compute()
        tensor(3.)
    """

    total: torch.Tensor
    weight: torch.Tensor

    @classmethod
    def empty(cls, dtype: torch.dtype = torch.float32, device: Any = None) -> Mean:
        """Return the empty mean (zeros) of the given dtype on ``device``.

        Example:
            >>> Mean.empty()
            Mean(total=tensor(0.), weight=tensor(0.))
        """
        return cls(_zeros(dtype, device), _zeros(dtype, device))

    @classmethod
    def from_value(cls, value: Any, weight: Any = None) -> Mean:
        """Build a mean from a value and an optional weight.

        A 0-d ``value`` is one observation (e.g. a batch's mean loss) of weight ``weight``
        (default 1; pass the batch size to weight batches by size). A ``value`` with more
        elements is a set of observations: the result is their mean, weighted elementwise by
        ``weight`` (broadcast to ``value``'s shape; a 0/1 mask works), default all ones.
        Low-precision floats and integers accumulate in float32.

        Args:
            value: a tensor (or Python number).
            weight: ``None``, a number, or a tensor broadcastable to ``value``.

        Example:
            >>> import torch
            >>> Mean.from_value(torch.tensor(2.0), weight=4)
            Mean(total=tensor(8.), weight=tensor(4.))
            >>> Mean.from_value(torch.tensor([1.0, 5.0, 9.0]), weight=torch.tensor([1, 1, 0]))
            Mean(total=tensor(6.), weight=tensor(2.))
        """
        v = _float(_tensor(value, "value"))
        if weight is None:
            if v.ndim == 0:
                return cls(v, torch.ones_like(v))
            return cls(v.sum(), torch.full((), v.numel(), dtype=v.dtype, device=v.device))
        w = torch.as_tensor(weight, device=v.device).to(v.dtype)
        if v.ndim == 0 and w.ndim == 0:
            return cls(v * w, w)
        w = torch.broadcast_to(w, v.shape)
        return cls((v * w).sum(), w.sum())

    def merge(self, other: Mean) -> Mean:
        """Add totals and weights (``other`` is cast to ``self``'s dtype).

        Example:
            >>> Mean.empty().merge(Mean.from_value(3.0)).compute()
            tensor(3.)
        """
        dt = self.total.dtype
        return Mean(self.total + other.total.to(dt), self.weight + other.weight.to(dt))

    def compute(self) -> torch.Tensor:
        """Return ``total / weight`` (``nan`` when empty).

        Example:
            >>> Mean.from_value(torch.tensor([1.0, 2.0])).compute()
            tensor(1.5000)
        """
        return self.total / self.weight


@dataclasses.dataclass(frozen=True, eq=False)
class Sum(Metric):
    """A running sum (e.g. tokens or examples seen). Integer inputs stay int64.

    Attributes:
        total: the sum so far.

    Example:
        >>> import torch
        >>> Sum.from_value(torch.tensor([1, 2, 3])).merge(Sum.from_value(torch.tensor(4)))
        Sum(total=tensor(10))
    """

    total: torch.Tensor

    @classmethod
    def empty(cls, dtype: torch.dtype = torch.float32, device: Any = None) -> Sum:
        """Return the empty sum (a zero of ``dtype``).

        Example:
            >>> Sum.empty(torch.int64)
            Sum(total=tensor(0))
        """
        return cls(_zeros(dtype, device))

    @classmethod
    def from_value(cls, value: Any) -> Sum:
        """Sum all elements of ``value``; floats accumulate in at least float32, ints in int64.

        Example:
            >>> Sum.from_value(torch.tensor([0.5, 0.25]))
            Sum(total=tensor(0.7500))
        """
        v = _tensor(value, "value")
        v = _float(v) if v.is_floating_point() else v.to(torch.int64)
        return cls(v.sum())

    def merge(self, other: Sum) -> Sum:
        """Add the totals (``other`` is cast to ``self``'s dtype).

        Example:
            >>> Sum.from_value(1.0).merge(Sum.from_value(2.0)).compute()
            tensor(3.)
        """
        return Sum(self.total + other.total.to(self.total.dtype))

    def compute(self) -> torch.Tensor:
        """Return the sum.

        Example:
            >>> Sum.from_value(torch.tensor([2, 3])).compute()
            tensor(5)
        """
        return self.total


@dataclasses.dataclass(frozen=True, eq=False)
class Accuracy(Metric):
    """Classification accuracy: ``compute() = correct / total`` (``nan`` when empty).

    Counts are int64, so they stay exact over any number of examples.

    Attributes:
        correct: number of correct (unmasked) predictions.
        total: number of (unmasked) predictions.

    Example:
        >>> import torch
        >>> logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [3.0, 1.0]])
        >>> m = Accuracy.from_logits(logits, torch.tensor([0, 1, 1]))
        >>> m
        Accuracy(correct=tensor(2), total=tensor(3))
        >>> round(m.compute().item(), 4)
        0.6667
    """

    correct: torch.Tensor
    total: torch.Tensor

    @classmethod
    def empty(cls, device: Any = None) -> Accuracy:
        """Return the empty accuracy (zero counts).

        Example:
            >>> Accuracy.empty()
            Accuracy(correct=tensor(0), total=tensor(0))
        """
        return cls(_zeros(torch.int64, device), _zeros(torch.int64, device))

    @classmethod
    def from_predictions(
        cls, predictions: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor | None = None
    ) -> Accuracy:
        """Count ``predictions == labels``, over the positions where ``mask`` is true.

        Args:
            predictions: predicted class ids, same shape as ``labels``.
            labels: integer class ids.
            mask: optional bool (or 0/1) tensor of ``labels``' shape; ``False`` positions
                (padding) are not counted.

        Raises:
            ValueError: if the shapes differ.

        Example:
            >>> Accuracy.from_predictions(torch.tensor([1, 2, 3]), torch.tensor([1, 0, 3]),
            ...                           mask=torch.tensor([True, True, False]))
            Accuracy(correct=tensor(1), total=tensor(2))
        """
        if predictions.shape != labels.shape:
            raise ValueError(
                f"predictions: expected the shape of labels {tuple(labels.shape)}, "
                f"got {tuple(predictions.shape)}.")
        hit = predictions == labels
        if mask is None:
            mask = torch.ones_like(hit)
        else:
            if mask.shape != labels.shape:
                raise ValueError(
                    f"mask: expected the shape of labels {tuple(labels.shape)}, "
                    f"got {tuple(mask.shape)}.")
            mask = mask.to(torch.bool)
        return cls((hit & mask).sum(dtype=torch.int64), mask.sum(dtype=torch.int64))

    @classmethod
    def from_logits(
        cls, logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor | None = None
    ) -> Accuracy:
        """Count ``logits.argmax(-1) == labels`` (classes on the last axis of ``logits``).

        Args:
            logits: scores of shape ``labels.shape + (num_classes,)``.
            labels: integer class ids.
            mask: optional bool tensor of ``labels``' shape; ``False`` positions are skipped.

        Raises:
            ValueError: if ``logits.shape[:-1] != labels.shape``.

        Example:
            >>> Accuracy.from_logits(torch.tensor([[0.1, 0.9], [0.8, 0.2]]), torch.tensor([1, 1]))
            Accuracy(correct=tensor(1), total=tensor(2))
        """
        if logits.ndim != labels.ndim + 1 or logits.shape[:-1] != labels.shape:
            raise ValueError(
                f"logits: expected shape {tuple(labels.shape)} + (num_classes,) to match labels, "
                f"got {tuple(logits.shape)}.")
        return cls.from_predictions(logits.argmax(-1), labels, mask)

    def merge(self, other: Accuracy) -> Accuracy:
        """Add the counts.

        Example:
            >>> a = Accuracy(torch.tensor(1), torch.tensor(2))
            >>> a.merge(Accuracy(torch.tensor(3), torch.tensor(3)))
            Accuracy(correct=tensor(4), total=tensor(5))
        """
        return Accuracy(self.correct + other.correct, self.total + other.total)

    def compute(self) -> torch.Tensor:
        """Return ``correct / total`` as a float32 0-d tensor.

        Example:
            >>> Accuracy(torch.tensor(3), torch.tensor(4)).compute()
            tensor(0.7500)
        """
        return self.correct.to(torch.float32) / self.total.to(torch.float32)


@dataclasses.dataclass(frozen=True, eq=False)
class Last(Metric):
    """The most recent value (e.g. learning rate, loss scale); empty computes to 0.

    ``a.merge(b)`` is ``b`` if ``b`` holds a value (``b.count > 0``) else ``a``, written
    branch-free with ``torch.where``.

    Attributes:
        value: the latest value.
        count: how many values were merged in (int64); 0 means empty.

    Example:
        >>> import torch
        >>> Last.from_value(torch.tensor(0.1)).merge(Last.from_value(torch.tensor(0.2))).compute()
        tensor(0.2000)
    """

    value: torch.Tensor
    count: torch.Tensor

    @classmethod
    def empty(cls, dtype: torch.dtype = torch.float32, device: Any = None) -> Last:
        """Return the empty value (zero, count 0).

        Example:
            >>> Last.empty()
            Last(value=tensor(0.), count=tensor(0))
        """
        return cls(_zeros(dtype, device), _zeros(torch.int64, device))

    @classmethod
    def from_value(cls, value: Any) -> Last:
        """Wrap a 0-d value (floats become at least float32).

        Raises:
            ValueError: if ``value`` is not 0-d.

        Example:
            >>> Last.from_value(torch.tensor(3e-4))
            Last(value=tensor(0.0003), count=tensor(1))
        """
        v = _float(_tensor(value, "value"))
        if v.ndim != 0:
            raise ValueError(
                f"value: expected a 0-d tensor, got shape {tuple(v.shape)}. "
                "HINT: reduce it first, e.g. x.mean().")
        return cls(v, torch.ones((), dtype=torch.int64, device=v.device))

    def merge(self, other: Last) -> Last:
        """Keep ``other``'s value if it has one, else ``self``'s.

        Example:
            >>> Last.from_value(1.0).merge(Last.empty()).compute()
            tensor(1.)
        """
        newer = other.count > 0
        value = torch.where(newer, other.value.to(self.value.dtype), self.value)
        return Last(value, self.count + other.count)

    def compute(self) -> torch.Tensor:
        """Return the latest value.

        Example:
            >>> Last.from_value(5.0).compute()
            tensor(5.)
        """
        return self.value


@dataclasses.dataclass(frozen=True, eq=False)
class Std(Metric):
    """Population standard deviation (``ddof=0``, like ``torch.std(x, unbiased=False)``).

    Stores the count, the mean and ``m2`` (the sum of squared deviations from the mean) and
    merges them with Chan et al.'s parallel formula, which avoids the catastrophic cancellation
    of the textbook ``sum(x**2) / n - mean**2``. Empty computes to ``nan``.

    Attributes:
        count: number of observations (float).
        mean: their mean.
        m2: sum of squared deviations from ``mean``.

    Example:
        >>> import torch
        >>> x = torch.tensor([1.0, 2.0, 3.0, 4.0, 10.0])
        >>> m = Std.from_value(x[:2]).merge(Std.from_value(x[2:]))
        >>> round(m.compute().item(), 4), round(x.std(unbiased=False).item(), 4)
        (3.1623, 3.1623)
    """

    count: torch.Tensor
    mean: torch.Tensor
    m2: torch.Tensor

    @classmethod
    def empty(cls, dtype: torch.dtype = torch.float32, device: Any = None) -> Std:
        """Return the empty value (zeros).

        Example:
            >>> Std.empty()
            Std(count=tensor(0.), mean=tensor(0.), m2=tensor(0.))
        """
        return cls(_zeros(dtype, device), _zeros(dtype, device), _zeros(dtype, device))

    @classmethod
    def from_value(cls, values: Any, mask: Any = None) -> Std:
        """Summarise all elements of ``values`` (where ``mask`` is true, if given).

        Args:
            values: a tensor of observations (any shape; a 0-d tensor is one observation).
            mask: optional bool (or 0/1) tensor broadcastable to ``values``.

        Example:
            >>> Std.from_value(torch.tensor([1.0, 3.0, 100.0]), mask=torch.tensor([1, 1, 0]))
            Std(count=tensor(2.), mean=tensor(2.), m2=tensor(2.))
        """
        v = _float(_tensor(values, "values"))
        if mask is None:
            n = torch.full((), v.numel(), dtype=v.dtype, device=v.device)
            mean = v.sum() / n.clamp_min(1)
            return cls(n, mean, torch.square(v - mean).sum())
        w = torch.broadcast_to(torch.as_tensor(mask, device=v.device).to(v.dtype), v.shape)
        n = w.sum()
        mean = (v * w).sum() / n.clamp_min(1)
        return cls(n, mean, (w * torch.square(v - mean)).sum())

    def merge(self, other: Std) -> Std:
        """Combine with Chan et al.'s formula (``other`` is cast to ``self``'s dtype).

        Example:
            >>> Std.empty().merge(Std.from_value(torch.tensor([0.0, 2.0]))).compute()
            tensor(1.)
        """
        dt = self.mean.dtype
        n_b, mean_b, m2_b = other.count.to(dt), other.mean.to(dt), other.m2.to(dt)
        n = self.count + n_b
        frac = n_b / torch.where(n > 0, n, torch.ones_like(n))  # n_b / n, and 0 when both empty
        delta = mean_b - self.mean
        mean = self.mean + delta * frac
        m2 = self.m2 + m2_b + delta * delta * self.count * frac
        return Std(n, mean, m2)

    def compute(self) -> torch.Tensor:
        """Return ``sqrt(m2 / count)``.

        Example:
            >>> Std.from_value(torch.tensor([2.0, 4.0])).compute()
            tensor(1.)
        """
        return torch.sqrt(self.m2 / self.count)


def as_metric(x: Any, name: str = "value") -> Metric:
    """Return ``x`` if it is a `Metric`, or a `Mean` of it if it is a 0-d real tensor.

    Args:
        x: a metric or a bare 0-d tensor (float, int or bool), as a step returns it.
        name: how to name ``x`` in the error, e.g. ``"metrics['loss']"``.

    Raises:
        TypeError: for anything else, e.g.
            ``metrics['loss']: expected a 0-d tensor or a functrain.metrics metric,
            got tensor of shape (4,).``

    Example:
        >>> import torch
        >>> as_metric(torch.tensor(2.0))
        Mean(total=tensor(2.), weight=tensor(1.))
        >>> try:
        ...     as_metric(torch.ones(4), name="metrics['loss']")
        ... except TypeError as e:
        ...     print(str(e).splitlines()[0])
        metrics['loss']: expected a 0-d tensor or a functrain.metrics metric, got tensor of shape (4,).
    """  # noqa: E501
    if isinstance(x, Metric):
        return x
    if isinstance(x, torch.Tensor) and x.ndim == 0 and not x.is_complex():
        return Mean.from_value(x)
    hint = ""
    if isinstance(x, torch.Tensor) and x.ndim > 0:
        hint = ("\nHINT: reduce it in the step (x.mean()), or wrap it: "
                "functrain.metrics.Mean.from_value(x) averages all its elements.")
    elif isinstance(x, (int, float)):
        hint = ("\nHINT: return tensors, not Python numbers (a Python number is a host value "
                "and a compile-time constant); e.g. return the loss tensor itself.")
    raise TypeError(
        f"{name}: expected a 0-d tensor or a functrain.metrics metric, got {_describe(x)}.{hint}")


def to_metrics(d: Mapping[str, Any], name: str = "metrics") -> dict[str, Metric]:
    """Validate a dict of metrics and bare 0-d tensors, and wrap the bare tensors in `Mean`.

    Args:
        d: ``{name: metric or 0-d tensor}``; keys must be strings.
        name: how to name ``d`` in errors.

    Raises:
        TypeError: if ``d`` is not a mapping, a key is not a string, or a value is neither a
            metric nor a 0-d tensor; the message names the key.

    Example:
        >>> import torch
        >>> to_metrics({"loss": torch.tensor(0.5), "lr": Last.from_value(0.1)})
        {'loss': Mean(total=tensor(0.5000), weight=tensor(1.)), 'lr': Last(value=tensor(0.1000), count=tensor(1))}
    """  # noqa: E501
    if not isinstance(d, Mapping):
        raise TypeError(
            f"{name}: expected a dict of metrics or 0-d tensors, got {_describe(d)}. "
            "HINT: return metrics as a dict, e.g. {'loss': loss}.")
    out = {}
    for k, v in d.items():
        if not isinstance(k, str):
            raise TypeError(f"{name}: expected string keys, got {k!r}.")
        out[k] = as_metric(v, name=f"{name}[{k!r}]")
    return out


def empty_like(metrics: Any) -> Any:
    """Return the empty accumulator with the structure, dtypes and devices of ``metrics``.

    Bare 0-d tensors become empty `Mean` values, so a runner can build the window accumulator
    from the first step's output (or its ``eval_shape``) and reset it after each log window.

    Args:
        metrics: a dict of metrics / bare 0-d tensors, or a single metric.

    Returns:
        The same structure with every field zero, i.e. ``empty`` for each metric.

    Example:
        >>> import torch
        >>> empty_like({"loss": torch.tensor(0.3), "acc": Accuracy(torch.tensor(2), torch.tensor(4))})
        {'loss': Mean(total=tensor(0.), weight=tensor(0.)), 'acc': Accuracy(correct=tensor(0), total=tensor(0))}
    """  # noqa: E501
    if isinstance(metrics, Metric):
        return _tree.map(torch.zeros_like, metrics)
    return {k: _tree.map(torch.zeros_like, m) for k, m in to_metrics(metrics).items()}


def merge_all(acc: Mapping[str, Metric], new: Mapping[str, Any], name: str = "metrics"
              ) -> dict[str, Metric]:
    """Merge a step's metrics ``new`` into the accumulator ``acc``, key by key.

    Args:
        acc: the accumulator, ``{name: metric}`` (e.g. from `empty_like`).
        new: the step's ``{name: metric or 0-d tensor}`` with the same keys and metric types.
        name: how to name ``new`` in errors.

    Returns:
        ``{k: acc[k].merge(new[k])}``, in ``acc``'s key order.

    Raises:
        functrain.tree.TreeMismatchError: if the keys or a metric's type differ; names the key.
        TypeError: if a value of ``new`` is not a metric or 0-d tensor.

    Example:
        >>> import torch
        >>> acc = empty_like({"loss": torch.tensor(0.0)})
        >>> for x in [1.0, 2.0, 6.0]:
        ...     acc = merge_all(acc, {"loss": torch.tensor(x)})
        >>> acc["loss"].compute()
        tensor(3.)
        >>> try:
        ...     merge_all(acc, {"loss": torch.tensor(1.0), "acc": torch.tensor(0.5)})
        ... except TreeMismatchError as e:
        ...     print(e)
        metrics: expected keys ['loss'], got ['acc', 'loss']; unexpected ['acc']. HINT: a step must return the same metric names every call.
    """  # noqa: E501
    new = to_metrics(new, name)
    if acc.keys() != new.keys():
        e_keys, g_keys = sorted(acc), sorted(new)
        missing = [k for k in e_keys if k not in new]
        extra = [k for k in g_keys if k not in acc]
        detail = ", ".join([f"missing {missing}"] * bool(missing)
                           + [f"unexpected {extra}"] * bool(extra))
        raise TreeMismatchError(
            f"{name}: expected keys {e_keys}, got {g_keys}; {detail}. "
            "HINT: a step must return the same metric names every call.")
    out = {}
    for k, a in acc.items():
        b = new[k]
        if type(a) is not type(b):
            raise TreeMismatchError(
                f"{name}[{k!r}]: expected {type(a).__name__}, got {type(b).__name__}. "
                "HINT: a bare 0-d tensor is a Mean; return the same metric type every call.")
        out[k] = a.merge(b)
    return out


def compute_all_tensors(acc: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """Compute every metric, returning 0-d tensors on device (no host sync).

    Example:
        >>> import torch
        >>> compute_all_tensors({"loss": Mean.from_value(torch.tensor([1.0, 2.0]))})
        {'loss': tensor(1.5000)}
    """
    return {k: m.compute() for k, m in to_metrics(acc).items()}


def compute_all(acc: Mapping[str, Any]) -> dict[str, float]:
    """Compute every metric and read them all to the host with ONE device-to-host transfer.

    The computed values are stacked on device (float64, or float32 on devices without float64
    such as MPS) and read with a single ``.tolist()``: one sync per log window, whatever the
    number of metrics. Empty `Mean`, `Accuracy` and `Std` values read as ``nan``.

    Args:
        acc: ``{name: metric or 0-d tensor}``.

    Returns:
        ``{name: float}`` in ``acc``'s key order.

    Raises:
        ValueError: if a metric's ``compute()`` is not 0-d; names the key.

    Example:
        >>> import torch
        >>> compute_all({"loss": Mean.from_value(torch.tensor(0.25)), "n": Sum.from_value(7)})
        {'loss': 0.25, 'n': 7.0}
    """
    values = compute_all_tensors(acc)
    if not values:
        return {}
    first = next(iter(values.values()))
    device = first.device
    dtype = torch.float32 if device.type == "mps" else torch.float64
    column = []
    for k, v in values.items():
        if v.ndim != 0:
            raise ValueError(
                f"metrics[{k!r}]: expected compute() to return a 0-d tensor, "
                f"got shape {tuple(v.shape)}.")
        column.append(v.detach().to(device=device, dtype=dtype))
    return dict(zip(values.keys(), torch.stack(column).tolist(), strict=True))
