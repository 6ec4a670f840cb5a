"""Cheap monitors: throughput and MFU from wall-clock time, the learning rate, and the metric
helpers (`norm_metrics`, `lr_metrics`) a step returns so values ride along with its window."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from .. import metrics as _metrics
from .. import tree as _tree
from .._errors import check_int, check_number
from ._common import _publish
from ._protocol import Callback, Loop

__all__ = ["LearningRateMonitor", "ThroughputMonitor", "lr_metrics", "norm_metrics"]

class ThroughputMonitor(Callback):
    """Log steps/s, samples/s, FLOP/s and MFU over each log window; never touches the device.

    Measured with wall-clock time at each ``on_log`` (just after fit's window read, so queued
    device work is finished); time spent in evaluation is left out by restarting the window in
    ``on_eval``. The first window includes compilation. Samples come from ``batch_size`` or,
    when the loop counts them, ``loop.samples``. Logs ``throughput/steps_per_s``,
    ``throughput/samples_per_s``, ``throughput/flops_per_s`` and ``throughput/mfu`` (the last
    three when their inputs are known).

    Args:
        batch_size: samples per step (else ``loop.samples`` is used if the loop has it).
        flops_per_sample: FLOPs of one sample's forward + backward + update (e.g. about
            ``6 * n_params * tokens_per_sample`` for a transformer).
        peak_flops: the device's peak FLOP/s for the run's dtype, for MFU.

    Attributes:
        latest: the values of the last window.

    Example:
        >>> from functrain import Loop
        >>> tm = ThroughputMonitor(batch_size=32, flops_per_sample=1e6, peak_flops=1e9)
        >>> ticks = iter([0.0, 2.0])
        >>> tm._clock = lambda: next(ticks)
        >>> loop = Loop(state=None, step=0, epoch=0)
        >>> tm.on_run_start(loop)
        >>> loop.step = 10
        >>> tm.on_log(loop, {})
        >>> tm.latest
        {'throughput/steps_per_s': 5.0, 'throughput/samples_per_s': 160.0, 'throughput/flops_per_s': 160000000.0, 'throughput/mfu': 0.16}
    """  # noqa: E501

    def __init__(self, batch_size: int | None = None, flops_per_sample: float | None = None,
                 peak_flops: float | None = None) -> None:
        if batch_size is not None:
            check_int("batch_size", batch_size, minimum=1)
        self.batch_size = batch_size
        self.flops_per_sample = check_number("flops_per_sample", flops_per_sample, low=0,
                                             low_open=True, allow_none=True)
        self.peak_flops = check_number("peak_flops", peak_flops, low=0, low_open=True,
                                       allow_none=True)
        self.latest: dict[str, float] = {}
        self._clock: Callable[[], float] = time.perf_counter
        self._start: tuple[float, int, int | None] | None = None

    def _mark(self, loop: Loop, now: float | None = None) -> None:
        now = self._clock() if now is None else now
        self._start = (now, loop.step, getattr(loop, "samples", None))

    def on_run_start(self, loop: Loop) -> None:
        """Start the first window."""
        self._mark(loop)

    def on_eval(self, loop: Loop, metrics: dict[str, float]) -> None:
        """Restart the window after an evaluation, so its time is not counted."""
        self._mark(loop)

    def on_log(self, loop: Loop, metrics: dict[str, float]) -> None:
        """Compute the window's rates and publish them."""
        if self._start is None:
            self._mark(loop)
            return
        t0, step0, samples0 = self._start
        now = self._clock()
        self._mark(loop, now)
        dt, steps = now - t0, loop.step - step0
        if dt <= 0 or steps <= 0:
            return
        values = {"throughput/steps_per_s": steps / dt}
        samples_now = getattr(loop, "samples", None)
        if self.batch_size is not None:
            samples: float | None = steps * self.batch_size
        elif samples0 is not None and samples_now is not None:
            samples = samples_now - samples0
        else:
            samples = None
        if samples is not None:
            values["throughput/samples_per_s"] = samples / dt
            if self.flops_per_sample is not None:
                flops = samples * self.flops_per_sample / dt
                values["throughput/flops_per_s"] = flops
                if self.peak_flops is not None:
                    values["throughput/mfu"] = flops / self.peak_flops
        self.latest = values
        _publish(loop, values)


def _short(name: str) -> str:
    return "lr" if name == "learning_rate" else name


def _find_hyperparams(opt_state: Any, names: Sequence[str]) -> dict[str, Any]:
    """``{metric name: 0-d tensor}`` for ``names`` in every injected-hyperparams state.

    Walks chain tuples (by index), dicts such as ``multi_transform``'s groups (by key) and
    NamedTuple wrappers (``masked``, ``MultiSteps``, ``apply_if_finite``: transparent).
    One state holding a hyperparameter gives e.g. ``lr``; several give ``lr/<where>``, e.g.
    ``lr/1`` (chain index) or ``lr/fast`` (``multi_transform`` group).
    """
    found: list[tuple[tuple[str, ...], Mapping[str, Any]]] = []

    def walk(node: Any, path: tuple[str, ...]) -> None:
        if isinstance(node, torch.Tensor):
            return
        if isinstance(node, tuple) and hasattr(node, "_fields"):
            hp = getattr(node, "hyperparams", None)
            if isinstance(hp, Mapping):
                found.append((path, hp))
            for field in node._fields:
                if field != "hyperparams":
                    walk(getattr(node, field), path)
        elif isinstance(node, (tuple, list)):
            for i, x in enumerate(node):
                walk(x, (*path, str(i)))
        elif isinstance(node, Mapping):
            for k, v in node.items():
                walk(v, (*path, str(k)))

    walk(getattr(opt_state, "opt_state", opt_state), ())
    out: dict[str, Any] = {}
    for name in names:
        having = [(path, hp[name]) for path, hp in found if name in hp]
        for path, value in having:
            key = _short(name) + ("/" + "/".join(path) if len(having) > 1 and path else "")
            while key in out:  # nested injected states at one place: keep both
                key += "'"
            out[key] = value
    return out


class LearningRateMonitor(Callback):
    """Log the learning rate (and other injected hyperparameters) at every log window.

    By default it reads ``opt_state.hyperparams`` of every `functrain.optim.inject_hyperparams`
    state in ``loop.state.opt_state``, searching chains, ``multi_transform`` groups, ``masked``,
    ``MultiSteps`` and ``apply_if_finite``: one injected state logs ``lr``, several log
    ``lr/<index or group>``. These values are the ones the last update used. They are 0-d
    device tensors, read with ONE transfer per log window (just after fit's own read, so nothing
    is waiting on it), never per step. For no extra read at all, return `lr_metrics` from the
    step instead. With ``schedule``, no state is read: it logs ``schedule(loop.step - 1)`` (the
    value the last update used), evaluated on the host.

    Args:
        hyperparams: which injected hyperparameters to log (``learning_rate`` logs as ``lr``).
        schedule: a schedule (or ``{name: schedule}``) to evaluate instead of reading the state.

    Attributes:
        latest: the values of the last window.

    Raises:
        ValueError: (in ``on_run_start``) with no schedule, if the optimizer state holds no
            injected hyperparameters.

    Example:
        >>> import torch, functrain as ft
        >>> opt = ft.optim.chain(ft.optim.clip(1.0),
        ...                      ft.optim.inject_hyperparams(ft.optim.adam)(learning_rate=0.25))
        >>> state = ft.TrainState.create(torch.nn.Linear(2, 1), opt)
        >>> loop, lrm = ft.Loop(state=state, step=10, epoch=0), LearningRateMonitor()
        >>> lrm.on_run_start(loop)
        >>> lrm.on_log(loop, {})
        >>> lrm.latest, loop.metrics
        ({'lr': 0.25}, {'lr': 0.25})
        >>> sched = LearningRateMonitor(schedule=ft.optim.linear_schedule(1.0, 0.0, 100))
        >>> sched.on_log(ft.Loop(state=None, step=51, epoch=0), {}); sched.latest
        {'lr': 0.5}
    """

    def __init__(self, hyperparams: Sequence[str] = ("learning_rate",),
                 schedule: Callable[[Any], Any] | Mapping[str, Callable[[Any], Any]] | None = None
                 ) -> None:
        if isinstance(hyperparams, str) or not all(isinstance(h, str) for h in hyperparams):
            raise ValueError(f"hyperparams: expected a sequence of names, got {hyperparams!r}.")
        self.hyperparams = tuple(hyperparams)
        if schedule is not None and not isinstance(schedule, Mapping):
            schedule = {"lr": schedule}
        for name, s in (schedule or {}).items():
            if not callable(s):
                raise TypeError(f"schedule[{name!r}]: expected a schedule (a function of the "
                                f"step), got {type(s).__name__}.")
        self.schedule = schedule
        self.latest: dict[str, float] = {}

    def on_run_start(self, loop: Loop) -> None:
        """Check that there is something to log."""
        if self.schedule is None and not _find_hyperparams(loop.state, self.hyperparams):
            raise ValueError(
                f"LearningRateMonitor: expected injected hyperparameters {list(self.hyperparams)}"
                " in state.opt_state, got none. HINT: build the optimizer with "
                "functrain.optim.inject_hyperparams(optim.adamw)(learning_rate=...), or pass "
                "LearningRateMonitor(schedule=the_schedule).")

    def on_log(self, loop: Loop, metrics: dict[str, float]) -> None:
        """Read (or evaluate) the hyperparameters and publish them."""
        if self.schedule is not None:
            step = max(loop.step - 1, 0)
            values = {k: float(s(step)) for k, s in self.schedule.items()}
        else:
            tensors = _find_hyperparams(loop.state, self.hyperparams)
            values = _metrics.compute_all(tensors) if tensors else {}
        self.latest = values
        _publish(loop, values)




def norm_metrics(*, grads: Any = None, params: Any = None, updates: Any = None,
                 reduce: str = "mean") -> dict[str, _metrics.Metric]:
    """Global L2 norms to return from the step, computed on device, read once per log window.

    Call it inside the step (only the step has the gradients) and merge the result into the
    step's metrics; fit reads it with the window's single transfer and logs it as
    ``train/grad_norm``, ``train/param_norm``, ``train/update_norm``.

    Args:
        grads: the gradients (logged as ``grad_norm``).
        params: the parameters (``param_norm``).
        updates: the optimizer's updates (``update_norm``).
        reduce: ``"mean"``: the mean over the window (`functrain.metrics.Mean`); ``"last"``:
            the latest step's value (`functrain.metrics.Last`).

    Returns:
        ``{name: metric}`` for each tree given.

    Raises:
        ValueError: if no tree is given or ``reduce`` is unknown.

    Example:
        >>> import torch
        >>> m = norm_metrics(grads={"w": torch.tensor([3.0, 4.0])}, params={"w": torch.ones(4)})
        >>> {k: v.compute() for k, v in m.items()}
        {'grad_norm': tensor(5.), 'param_norm': tensor(2.)}

        In a step: ``return new_state, {"loss": loss, **norm_metrics(grads=grads)}``.
    """
    if reduce not in ("mean", "last"):
        raise ValueError(f"reduce: expected 'mean' or 'last', got {reduce!r}.")
    trees = {"grad_norm": grads, "param_norm": params, "update_norm": updates}
    trees = {k: v for k, v in trees.items() if v is not None}
    if not trees:
        raise ValueError("norm_metrics: expected grads=, params= or updates=, got none.")
    wrap = _metrics.Mean.from_value if reduce == "mean" else _metrics.Last.from_value
    return {k: wrap(_tree.global_norm(v)) for k, v in trees.items()}


def lr_metrics(opt_state: Any, hyperparams: Sequence[str] = ("learning_rate",)
               ) -> dict[str, _metrics.Metric]:
    """The injected learning rate(s) as `functrain.metrics.Last` values, to return from the step.

    The zero-extra-read alternative to `LearningRateMonitor`: the values join the window's
    single transfer and are logged as ``train/lr`` (or ``train/lr/<where>``). Names and the
    search through nested optimizer states are those of `LearningRateMonitor`.

    Args:
        opt_state: the optimizer state (or a `functrain.TrainState`).
        hyperparams: which injected hyperparameters (``learning_rate`` is named ``lr``).

    Returns:
        ``{name: Last}``; empty if the state holds no injected hyperparameters.

    Example:
        >>> import torch, functrain as ft
        >>> opt = ft.optim.inject_hyperparams(ft.optim.sgd)(learning_rate=0.5)
        >>> m = lr_metrics(opt.init({"w": torch.zeros(1)}))
        >>> m["lr"].compute()
        tensor(0.5000)

        In a step: ``return new_state, {"loss": loss, **lr_metrics(new_state.opt_state)}``.
    """
    return {k: _metrics.Last.from_value(v)
            for k, v in _find_hyperparams(opt_state, hyperparams).items()}
