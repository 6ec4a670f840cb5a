"""Dicts of metrics, as a step returns them: validate, start empty, merge, compute."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from .. import tree as _tree
from .._errors import describe
from ..tree import TreeMismatchError
from ._builtin import Mean
from ._metric import Metric


def as_metric(x: Any, name: str = "value") -> Metric:
    """Return ``x`` if it is a `Metric`, or a `Mean` of it if it is a 0-d real tensor.

    Args:
        x: a metric or a bare 0-d tensor (float, int or bool), as a step returns it.
        name: how to name ``x`` in the error, e.g. ``"metrics['loss']"``.

    Raises:
        TypeError: for anything else, e.g.
            ``metrics['loss']: expected a 0-d tensor or a functrain.metrics metric,
            got a float32 tensor of shape (4,).``

    Example:
        >>> import torch
        >>> as_metric(torch.tensor(2.0))
        Mean(total=tensor(2.), weight=tensor(1.))
        >>> try:
        ...     as_metric(torch.ones(4), name="metrics['loss']")
        ... except TypeError as e:
        ...     print(str(e).splitlines()[0])
        metrics['loss']: expected a 0-d tensor or a functrain.metrics metric, got a float32 tensor of shape (4,).
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
        f"{name}: expected a 0-d tensor or a functrain.metrics metric, got {describe(x)}.{hint}")


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
        >>> from functrain.metrics import Last
        >>> to_metrics({"loss": torch.tensor(0.5), "lr": Last.from_value(0.1)})
        {'loss': Mean(total=tensor(0.5000), weight=tensor(1.)), 'lr': Last(value=tensor(0.1000), count=tensor(1))}
    """  # noqa: E501
    if not isinstance(d, Mapping):
        raise TypeError(
            f"{name}: expected a dict of metrics or 0-d tensors, got {describe(d)}. "
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
        >>> from functrain.metrics import Accuracy
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
        >>> from functrain.metrics import Sum
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
