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


from ._builtin import Accuracy as Accuracy
from ._builtin import Last as Last
from ._builtin import Mean as Mean
from ._builtin import Std as Std
from ._builtin import Sum as Sum
from ._collection import as_metric as as_metric
from ._collection import compute_all as compute_all
from ._collection import compute_all_tensors as compute_all_tensors
from ._collection import empty_like as empty_like
from ._collection import merge_all as merge_all
from ._collection import to_metrics as to_metrics
from ._metric import Metric as Metric

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
