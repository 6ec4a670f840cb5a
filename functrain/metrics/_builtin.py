"""The built-in metrics: `Mean`, `Sum`, `Accuracy`, `Last`, `Std`."""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from ._metric import Metric, _float, _tensor, _zeros


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
