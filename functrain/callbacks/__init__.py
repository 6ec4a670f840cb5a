"""Callbacks for `functrain.fit`: early stopping, best-k checkpoints, and cheap monitors.

Every callback here acts only where `fit` already has host values: ``on_log`` receives the
training window that fit has just read (one device-to-host transfer for all metrics) and
``on_eval`` the evaluation's values. None of them touches the device per step.

- `EarlyStopping` and `ModelCheckpoint` watch one metric by its full name: ``"val/..."`` metrics
  are checked in ``on_eval``, ``"train/..."`` metrics in ``on_log``.
- `ThroughputMonitor` turns wall-clock time between log windows into steps/s, samples/s, FLOP/s
  and MFU, with no device access at all. `LearningRateMonitor` reads the injected
  hyperparameters (one batched read per log window) or evaluates a schedule.
- Values that only the step can see (gradient norms, and the learning rate with no extra read)
  are computed *inside* the step with `norm_metrics` / `lr_metrics` and returned as metrics, so
  they ride along with the window's single transfer.

How monitors publish values: if the loop has a ``log(values)`` method they call it; otherwise
they merge their values into ``loop.metrics`` (which the end-of-run summary shows and later
callbacks can read) and keep them in their ``latest`` attribute.

Example:
    >>> import torch, functrain as ft
    >>> from functrain.callbacks import EarlyStopping
    >>> model = torch.nn.Linear(2, 1)
    >>> def step(state, batch):
    ...     x, y = batch
    ...     def loss_fn(params):
    ...         out, _ = ft.call(model, params, state.buffers, x)
    ...         return ((out - y) ** 2).mean()
    ...     grads, loss = torch.func.grad_and_value(loss_fn)(state.params)
    ...     return state.apply_gradients(grads), {"loss": loss}
    >>> def eval_fn(state, batch):  # a validation loss that never improves
    ...     return {"loss": torch.ones(())}
    >>> data = [(torch.randn(4, 2), torch.randn(4, 1))] * 2
    >>> stopper = EarlyStopping("val/loss", patience=2)
    >>> state = ft.fit(step, ft.TrainState.create(model, ft.optim.sgd(0.1)), data, epochs=10,
    ...                eval_fn=eval_fn, eval_loader=data, eval_every=2, compile="eager",
    ...                callbacks=[stopper, ft.Logging.quiet()])
    >>> int(state.step), stopper.stopped_step  # evaluations at steps 2 (best), 4, 6: stop
    (6, 6)
"""

from ._early_stopping import EarlyStopping as EarlyStopping
from ._model_checkpoint import ModelCheckpoint as ModelCheckpoint
from ._monitors import LearningRateMonitor as LearningRateMonitor
from ._monitors import ThroughputMonitor as ThroughputMonitor
from ._monitors import lr_metrics as lr_metrics
from ._monitors import norm_metrics as norm_metrics
from ._protocol import Callback as Callback
from ._protocol import Loop as Loop
from ._run import NonFiniteGuard as NonFiniteGuard
from ._run import ProgressBar as ProgressBar
from ._run import Summary as Summary

__all__ = [
    "Callback",
    "EarlyStopping",
    "LearningRateMonitor",
    "Loop",
    "ModelCheckpoint",
    "NonFiniteGuard",
    "ProgressBar",
    "Summary",
    "ThroughputMonitor",
    "lr_metrics",
    "norm_metrics",
]
