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
    ...                callbacks=[stopper], loggers=False, progress=False, summary=False)
    >>> int(state.step), stopper.stopped_step  # evaluations at steps 2 (best), 4, 6: stop
    (6, 6)
"""

from __future__ import annotations

import importlib
import math
import numbers
import os
import re
import shutil
import struct
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from . import metrics as _metrics
from . import tree as _tree
from ._callbacks import Callback, Loop

__all__ = [
    "EarlyStopping",
    "LearningRateMonitor",
    "ModelCheckpoint",
    "ThroughputMonitor",
    "lr_metrics",
    "norm_metrics",
]

_MODES = ("min", "max")
_OP_TEXT = {"min": "<", "max": ">"}


# ---------------------------------------------------------------------------------------------
# Shared helpers.


def _check_mode(mode: Any) -> str:
    if mode not in _MODES:
        raise ValueError(f"mode: expected 'min' or 'max', got {mode!r}.")
    return mode


def _check_monitor(monitor: Any, owner: str) -> str:
    if not isinstance(monitor, str) or not monitor.startswith(("val/", "train/")):
        raise ValueError(
            f"{owner}: monitor: expected a metric name starting with 'val/' or 'train/', got "
            f"{monitor!r}. HINT: fit prefixes eval_fn's metrics with 'val/' and step_fn's with "
            f"'train/', e.g. {owner}(monitor='val/loss').")
    return monitor


def _check_int(value: Any, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name}: expected an int >= {minimum}, got {value!r}.")
    return value


def _check_number(value: Any, name: str, allow_none: bool = True, positive: bool = False
                  ) -> float | None:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or (
            positive and not value > 0):
        kind = "a positive number" if positive else "a number"
        raise ValueError(f"{name}: expected {kind}{' or None' if allow_none else ''}, "
                         f"got {value!r}.")
    return float(value)


def _monitored(owner: str, monitor: str, metrics: Mapping[str, Any]) -> float:
    """``metrics[monitor]`` as a float, or an error listing the available names."""
    if monitor not in metrics:
        where = "evaluation" if monitor.startswith("val/") else "training window"
        raise ValueError(
            f"{owner}(monitor={monitor!r}): expected {monitor!r} among the {where} metrics, "
            f"got {sorted(metrics)}. HINT: monitor one of those names (the metric names "
            "returned by your eval_fn / step_fn, prefixed 'val/' / 'train/').")
    return float(metrics[monitor])


def _encode(x: float | None) -> float | str | None:
    """A float as strict JSON: non-finite values as "NaN" / "Infinity" / "-Infinity"."""
    if x is None or math.isfinite(x):
        return x
    return "NaN" if math.isnan(x) else ("Infinity" if x > 0 else "-Infinity")


def _decode(x: Any) -> float | None:
    return None if x is None else float(x)  # float() reads "NaN", "Infinity", "-Infinity"


def _f32(x: float) -> float:
    """``x`` rounded to float32 (to nearest, as torch rounds a Python float to float32), in
    plain Python: no tensor, so nothing a host-sync counter would see.

    A float32 difference computed in float64 and rounded once is the float32 result: float64
    has more than twice float32's precision, so the double rounding is exact.
    """
    try:
        return struct.unpack("f", struct.pack("f", x))[0]
    except OverflowError:  # rounds past float32's largest value
        return math.copysign(math.inf, x)


def _publish(loop: Loop, values: dict[str, float]) -> None:
    """Hand monitor values to the loop: ``loop.log`` when the loop has one, else loop.metrics."""
    log = getattr(loop, "log", None)
    if callable(log):
        log(values)
    else:
        loop.metrics.update(values)


# ---------------------------------------------------------------------------------------------
# EarlyStopping.


class EarlyStopping(Callback):
    """Stop training when a monitored metric stops improving, reaches a goal, or diverges.

    Follows Lightning's ``EarlyStopping`` (``lightning.pytorch.callbacks.EarlyStopping``,
    ``_evaluate_stopping_criteria``) check for check. At each check of the metric (each
    evaluation for ``"val/..."``, each log window for ``"train/..."``), in this order:

    1. ``check_finite`` and the value is NaN or +-inf: stop.
    2. ``stopping_threshold`` is set and the value is strictly better than it: stop.
    3. ``divergence_threshold`` is set and the value is strictly worse than it: stop.
    4. The value improves on the best so far, i.e. ``current - d < best`` in ``"min"`` mode and
       ``current - d > best`` in ``"max"`` mode with ``d = -min_delta`` (min) or ``+min_delta``
       (max), Lightning's sign convention (a positive ``min_delta`` demands a change of *more*
       than ``min_delta``; a negative one lets a slightly worse value count): it becomes the
       best and the wait count resets to 0.
    5. Otherwise the wait count grows by one; at ``patience`` training stops.

    Every comparison is made in float32, as Lightning makes it on a float32 metric: the value,
    the thresholds and ``current - d`` are rounded to float32 first (so with ``min_delta=0.1``,
    0.9 after 1.0 is *not* an improvement: ``0.9 + 0.1`` rounds to 1.0 in float32).
    A NaN that reaches step 4 (``check_finite=False``) is never an improvement. Stopping goes
    through ``loop.request_stop(reason)``; the reason is also kept in `reason`. As in
    Lightning (``strict=True``), a missing monitor is an error listing the available names.

    Args:
        monitor: the metric, by its full name, e.g. ``"val/loss"`` or ``"train/loss"``.
        mode: ``"min"`` (lower is better) or ``"max"``.
        patience: how many checks in a row without improvement stop training (>= 0).
        min_delta: the change that counts as an improvement (see step 4).
        stopping_threshold: stop as soon as the metric is better than this.
        divergence_threshold: stop as soon as the metric is worse than this.
        check_finite: stop on a NaN or infinite value.

    Attributes:
        wait_count: checks since the last improvement.
        best_score: the best value so far (``inf`` / ``-inf`` before the first).
        best_step: the step of the best value, or ``None``.
        stopped_step: the step at which this callback asked to stop, or ``None``.
        reason: why it stopped, or ``None``.

    Raises:
        ValueError: for a bad argument, or (during fit) when the monitored metric is missing.

    Example:
        >>> from functrain import Loop
        >>> es, loop = EarlyStopping("val/loss", patience=2), Loop(state=None, step=0, epoch=0)
        >>> for step, loss in enumerate([1.0, 0.5, 0.6, 0.7, 0.4], start=1):
        ...     loop.step = step
        ...     es.on_eval(loop, {"val/loss": loss})
        ...     if loop.stop_reason:
        ...         break
        >>> es.stopped_step, es.best_score, es.wait_count
        (4, 0.5, 2)
        >>> loop.stop_reason
        'EarlyStopping: val/loss did not improve in the last 2 checks (best 0.5 at step 2).'
    """

    def __init__(self, monitor: str, mode: str = "min", patience: int = 3,
                 min_delta: float = 0.0, stopping_threshold: float | None = None,
                 divergence_threshold: float | None = None, check_finite: bool = True) -> None:
        self.monitor = _check_monitor(monitor, "EarlyStopping")
        self.mode = _check_mode(mode)
        self.patience = _check_int(patience, "patience", 0)
        self.min_delta = _check_number(min_delta, "min_delta", allow_none=False)
        self.stopping_threshold = _check_number(stopping_threshold, "stopping_threshold")
        self.divergence_threshold = _check_number(divergence_threshold, "divergence_threshold")
        if not isinstance(check_finite, bool):
            raise ValueError(f"check_finite: expected a bool, got {check_finite!r}.")
        self.check_finite = check_finite
        self.wait_count = 0
        self.best_score = math.inf if mode == "min" else -math.inf
        self.best_step: int | None = None
        self.stopped_step: int | None = None
        self.reason: str | None = None

    @property
    def state_key(self) -> str:
        """A key naming this callback's state among others', e.g. in a checkpoint's metadata.

        Example:
            >>> EarlyStopping("val/acc", mode="max").state_key
            'EarlyStopping[monitor=val/acc,mode=max]'
        """
        return f"EarlyStopping[monitor={self.monitor},mode={self.mode}]"

    def _better(self, a: float, b: float) -> bool:
        return a < b if self.mode == "min" else a > b

    def _stop_reason(self, current: float, step: int) -> str | None:
        """Lightning's ``_evaluate_stopping_criteria``; updates best / wait_count.

        As there, every comparison is in float32 (Lightning's monitored value is a float32
        tensor; the thresholds and ``min_delta`` are Python floats, which torch rounds to
        float32 when it compares or subtracts), so e.g. ``0.9 + 0.1`` is not below ``1.0``.
        """
        m = self.monitor
        c32 = _f32(current)  # best_score keeps the value as given; comparisons see float32
        best = f"best {self.best_score:.4g}" + (
            f" at step {self.best_step}" if self.best_step is not None else "")
        if self.check_finite and not math.isfinite(current):
            return f"{m} = {current} is not finite ({best})."
        if self.stopping_threshold is not None and self._better(
                c32, _f32(self.stopping_threshold)):
            return (f"stopping threshold reached: {m} = {current:.4g} "
                    f"{_OP_TEXT[self.mode]} {self.stopping_threshold:.4g}.")
        if self.divergence_threshold is not None and self._better(
                -c32, -_f32(self.divergence_threshold)):
            worse = _OP_TEXT["max" if self.mode == "min" else "min"]
            return (f"divergence threshold reached: {m} = {current:.4g} {worse} "
                    f"{self.divergence_threshold:.4g}.")
        signed_delta = self.min_delta if self.mode == "max" else -self.min_delta
        if self._better(_f32(c32 - _f32(signed_delta)), _f32(self.best_score)):
            self.best_score, self.best_step, self.wait_count = current, step, 0
            return None
        self.wait_count += 1
        if self.wait_count >= self.patience:
            by = f" by more than {abs(self.min_delta):.4g}" if self.min_delta else ""
            return f"{m} did not improve{by} in the last {self.wait_count} checks ({best})."
        return None

    def _check(self, loop: Loop, metrics: Mapping[str, Any]) -> None:
        current = _monitored("EarlyStopping", self.monitor, metrics)
        reason = self._stop_reason(current, loop.step)
        if reason is not None:
            self.stopped_step = loop.step
            self.reason = f"EarlyStopping: {reason}"
            loop.request_stop(self.reason)

    def on_log(self, loop: Loop, metrics: dict[str, float]) -> None:
        """Check a ``"train/..."`` monitor against the window just logged."""
        if self.monitor.startswith("train/"):
            self._check(loop, metrics)

    def on_eval(self, loop: Loop, metrics: dict[str, float]) -> None:
        """Check a ``"val/..."`` monitor against the evaluation just run."""
        if self.monitor.startswith("val/"):
            self._check(loop, metrics)

    def state_dict(self) -> dict[str, Any]:
        """The counters a resumed run needs, as strict-JSON values (non-finite as strings).

        Example:
            >>> EarlyStopping("val/loss").state_dict()
            {'wait_count': 0, 'best_score': 'Infinity', 'best_step': None, 'stopped_step': None}
        """
        return {"wait_count": self.wait_count, "best_score": _encode(self.best_score),
                "best_step": self.best_step, "stopped_step": self.stopped_step}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore `state_dict`'s counters, so patience counting continues where it stopped.

        Example:
            >>> es = EarlyStopping("val/loss")
            >>> es.load_state_dict({"wait_count": 2, "best_score": 0.25, "best_step": 40,
            ...                     "stopped_step": None})
            >>> es.wait_count, es.best_score
            (2, 0.25)
        """
        missing = {"wait_count", "best_score", "stopped_step"} - set(state)
        if missing:
            raise ValueError(f"EarlyStopping.load_state_dict: expected keys wait_count, "
                             f"best_score, stopped_step, got {sorted(state)}.")
        self.wait_count = _check_int(state["wait_count"], "wait_count", 0)
        self.best_score = _decode(state["best_score"])
        self.best_step = state.get("best_step")
        self.stopped_step = state["stopped_step"]


# ---------------------------------------------------------------------------------------------
# ModelCheckpoint.


def _delete(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    elif os.path.lexists(path):
        os.remove(path)


def _is_inside(path: str, directory: str) -> bool:
    path, directory = os.path.abspath(path), os.path.abspath(directory)
    return os.path.commonpath([path, directory]) == directory and path != directory


_CHECKPOINT_NAME = re.compile(r"(?:best-step_\d{9}-[^/\\]+|ckpt-step_\d{9}|last-step_\d{9})")


def _checkpoint_name(path: Any, key: str) -> str:
    """The name of a checkpoint `ModelCheckpoint` wrote, from a saved name or path.

    Saved paths are never used as they are: only a name that this callback could have written
    is kept (the run's directory goes in front of it), so a checkpoint copied from another
    run or edited by hand cannot make the run write or delete anywhere else.
    """
    name = os.path.basename(os.path.normpath(path)) if isinstance(path, str) else None
    if name is None or name in (".", "..") or not _CHECKPOINT_NAME.fullmatch(name):
        raise ValueError(
            f"ModelCheckpoint.load_state_dict: {key}: expected the name of a checkpoint this "
            "callback writes (best-step_<step>-<metric>=<value>, ckpt-step_<step> or "
            f"last-step_<step>), got {path!r}. HINT: the checkpoint's metadata was edited or "
            "comes from something else; resume from another checkpoint, or pass resume=None.")
    return name


def _in_exception(loop: Any) -> bool:
    """True when the run ends with an exception (fit sets ``loop.error``)."""
    return getattr(loop, "error", None) is not None


class ModelCheckpoint(Callback):
    """Keep the best ``save_top_k`` checkpoints by a monitored metric, and optionally the last.

    Bookkeeping follows Lightning's ``ModelCheckpoint`` (``check_monitor_top_k``,
    ``_update_best_and_save``): a new checkpoint is written when fewer than ``save_top_k`` are
    kept, or when its score is *strictly* better than the worst kept (a tie does not replace);
    the worst one (the oldest among tied worst) is then evicted. A NaN score ranks as the worst
    possible value (Lightning stores it as +-inf), so it is kept only while there is room and
    never displaces a checkpoint; it is never `best_path`. With ``monitor=None`` every check
    writes a checkpoint and ``save_top_k`` (then -1, 0 or 1) keeps all, none or the latest.

    Checks happen after each evaluation (``on_eval``), or after each log window for a
    ``"train/..."`` monitor; top-k checkpoints are considered every ``every_n_evals`` checks and
    ``save_last`` writes at every check, and at the end of the run if the final step was not
    saved yet (a stop request, SIGTERM, Ctrl-C, a run without evaluations), unless the run is
    ending with an exception, so a resumable ``last`` exists whenever training stopped cleanly.
    A checkpoint is never deleted before its replacement is written: ``saver`` runs first,
    evictions after.

    Paths live under ``dirpath`` (default ``<run_dir>/checkpoints``):
    ``best-step_000000120-val_loss=0.1234`` (``ckpt-step_000000120`` with no monitor) and
    ``last-step_000000200``; each name holds the step, so writing never replaces a kept one
    (the prefixes keep them apart from `functrain.checkpoint.CheckpointManager`'s
    ``step_000000120`` in the same directory).

    Args:
        monitor: the metric to rank by (``"val/..."`` or ``"train/..."``), or ``None``.
        mode: ``"min"`` or ``"max"``.
        save_top_k: how many to keep: 0 none, k > 0 the k best, -1 all.
        save_last: also keep the latest checkpoint (one, replaced at each check).
        every_n_evals: consider a top-k checkpoint every this many checks.
        dirpath: the directory; default ``<loop.run_dir>/checkpoints``.
        saver: ``saver(path, loop) -> None`` that writes ``loop.state`` to ``path``
            atomically (all or nothing), replacing what may exist there. Default:
            ``functrain.checkpoint.save(path, loop.state, meta=..., overwrite=True)``, with
            step, epoch, metrics and this callback's `state_dict` in ``meta``.

    Attributes:
        best_k: the kept checkpoints as ``(score, step, path)``, best first.
        last_path: the path of the last checkpoint, or ``None``.

    Raises:
        ValueError: for bad arguments (e.g. ``save_top_k=2`` with no monitor); during fit,
            a missing monitored metric or, with no ``dirpath``, a run without ``run_dir``.

    Example:
        >>> import os, tempfile
        >>> from functrain import Loop
        >>> def saver(path, loop):  # stands in for functrain.checkpoint.save
        ...     with open(path, "w") as f:
        ...         f.write(str(loop.step))
        >>> ckpt = ModelCheckpoint("val/loss", save_top_k=2, saver=saver)
        >>> loop = Loop(state=None, step=0, epoch=0, run_dir=tempfile.mkdtemp())
        >>> ckpt.on_run_start(loop)
        >>> for step, loss in [(10, 0.5), (20, 0.25), (30, 0.5), (40, 0.375)]:
        ...     loop.step = step
        ...     ckpt.on_eval(loop, {"val/loss": loss})
        >>> sorted(os.listdir(os.path.join(loop.run_dir, "checkpoints")))
        ['best-step_000000020-val_loss=0.25', 'best-step_000000040-val_loss=0.375']
        >>> ckpt.best_score, os.path.basename(ckpt.best_path)
        (0.25, 'best-step_000000020-val_loss=0.25')
    """

    def __init__(self, monitor: str | None = None, mode: str = "min", save_top_k: int = 1,
                 save_last: bool = False, every_n_evals: int = 1,
                 dirpath: str | os.PathLike[str] | None = None,
                 saver: Callable[[str, Loop], None] | None = None) -> None:
        self.monitor = None if monitor is None else _check_monitor(monitor, "ModelCheckpoint")
        self.mode = _check_mode(mode)
        self.save_top_k = _check_int(save_top_k, "save_top_k", -1)
        if monitor is None and save_top_k not in (-1, 0, 1):
            raise ValueError(
                f"save_top_k: expected -1, 0 or 1 with monitor=None, got {save_top_k}. "
                "HINT: name the metric to rank by, e.g. ModelCheckpoint('val/loss', "
                f"save_top_k={save_top_k}).")
        if not isinstance(save_last, bool):
            raise ValueError(f"save_last: expected a bool, got {save_last!r}.")
        self.save_last = save_last
        self.every_n_evals = _check_int(every_n_evals, "every_n_evals", 1)
        if saver is not None and not callable(saver):
            raise TypeError(f"saver: expected a callable saver(path, loop), "
                            f"got {type(saver).__name__}.")
        self.saver = saver
        self.dirpath = None if dirpath is None else os.fspath(dirpath)
        self.best_k: list[tuple[float | None, int, str]] = []
        self._restored = False  # best_k / last_path hold names until the directory is known
        self.last_path: str | None = None
        self.last_step: int | None = None
        self._checks = 0
        self._checked_step: int | None = None

    @property
    def state_key(self) -> str:
        """A key naming this callback's state among others'.

        Example:
            >>> ModelCheckpoint("val/loss").state_key
            'ModelCheckpoint[monitor=val/loss,mode=min]'
        """
        return f"ModelCheckpoint[monitor={self.monitor},mode={self.mode}]"

    @property
    def best_path(self) -> str | None:
        """The path of the best checkpoint (never one with a NaN score), or ``None``."""
        top = self.best_k[0] if self.best_k else None
        return None if top is None or (top[0] is not None and math.isnan(top[0])) else top[2]

    @property
    def best_score(self) -> float | None:
        """The best score kept (``None`` with no monitor or no finite-ranked checkpoint)."""
        return self.best_k[0][0] if self.best_path is not None else None

    # -- ranking -------------------------------------------------------------------------------
    def _rank(self, score: float | None) -> float:
        """Lower is better: NaN counts as the worst value (Lightning's +-inf)."""
        if score is None:
            return 0.0
        if math.isnan(score):
            return math.inf
        return score if self.mode == "min" else -score

    def _ranked(self, entries: list[tuple[float | None, int, str]]) -> list:
        # stable: among ties the earlier checkpoint ranks first (Lightning's dict order)
        if self.monitor is None:
            return sorted(entries, key=lambda e: -e[1])
        return sorted(entries, key=lambda e: self._rank(e[0]))

    def _worst(self) -> tuple[float | None, int, str]:
        """The checkpoint to evict: the worst, and the oldest among tied worst."""
        if self.monitor is None:
            return min(self.best_k, key=lambda e: e[1])
        worst = max(self._rank(e[0]) for e in self.best_k)
        return next(e for e in self.best_k if self._rank(e[0]) == worst)

    # -- hooks ---------------------------------------------------------------------------------
    def on_run_start(self, loop: Loop) -> None:
        """Resolve the checkpoint directory (``<run_dir>/checkpoints`` by default)."""
        if self.dirpath is None and (self.save_top_k != 0 or self.save_last):
            if loop.run_dir is None:
                raise ValueError(
                    "ModelCheckpoint: expected a directory, got neither dirpath nor a run_dir. "
                    "HINT: pass fit(..., run_dir='runs/x') or ModelCheckpoint(dirpath=...).")
            self.dirpath = os.path.join(loop.run_dir, "checkpoints")
        if self.dirpath is not None:
            self._root_restored()

    def on_log(self, loop: Loop, metrics: dict[str, float]) -> None:
        """Check a ``"train/..."`` monitor."""
        if self.monitor is not None and self.monitor.startswith("train/"):
            self._check(loop, metrics)

    def on_eval(self, loop: Loop, metrics: dict[str, float]) -> None:
        """Check a ``"val/..."`` monitor, or save unranked (``monitor=None``)."""
        if self.monitor is None or self.monitor.startswith("val/"):
            self._check(loop, metrics)

    def on_run_end(self, loop: Loop) -> None:
        """With ``save_last``, save the final state if no check saved it (unless failing)."""
        if self.save_last and self.last_step != loop.step and self.dirpath is not None and (
                not _in_exception(loop)):
            self._save_last(loop)

    def _check(self, loop: Loop, metrics: Mapping[str, Any]) -> None:
        if self._checked_step == loop.step:
            return  # already checked at this step
        score = None if self.monitor is None else _monitored("ModelCheckpoint", self.monitor,
                                                             metrics)
        before = (self._checks, self._checked_step)
        self._checks, self._checked_step = self._checks + 1, loop.step
        try:
            if self.save_top_k != 0 and self._checks % self.every_n_evals == 0:
                self._save_top_k(loop, score)
            if self.save_last:
                self._save_last(loop)
        except BaseException:
            self._checks, self._checked_step = before
            raise

    def _save_top_k(self, loop: Loop, score: float | None) -> None:
        k = self.save_top_k
        full = k != -1 and len(self.best_k) >= k
        evict = None
        if full:
            evict = self._worst()
            if self.monitor is not None and not self._rank(score) < self._rank(evict[0]):
                return  # not strictly better than the worst kept (ties and NaN stay out)
        if self.monitor is None:
            name = f"ckpt-step_{loop.step:09d}"
        else:
            name = (f"best-step_{loop.step:09d}-{self.monitor.replace('/', '_')}"
                    f"={score:.4g}")
        path = os.path.join(self.dirpath, name)
        entry = (score, loop.step, path)
        kept = [e for e in self.best_k if e is not evict]
        self._write(loop, path, best_k=self._ranked(kept + [entry]))
        if evict is not None and evict[2] != path:
            self._remove(evict[2])

    def _save_last(self, loop: Loop) -> None:
        previous = self.last_path
        path = os.path.join(self.dirpath, f"last-step_{loop.step:09d}")
        self._write(loop, path, last_path=path, last_step=loop.step)
        if previous is not None and previous != path:
            self._remove(previous)

    def _write(self, loop: Loop, path: str, **bookkeeping: Any) -> None:
        """Update the bookkeeping, run the saver (so its meta sees the new state), or undo."""
        old = {k: getattr(self, k) for k in bookkeeping}
        for k, v in bookkeeping.items():
            setattr(self, k, v)
        try:
            os.makedirs(self.dirpath, exist_ok=True)
            (self.saver or self._default_save)(path, loop)
        except BaseException:
            for k, v in old.items():
                setattr(self, k, v)
            raise

    def _remove(self, path: str) -> None:
        kept = {e[2] for e in self.best_k} | {self.last_path}
        if path not in kept and _is_inside(path, self.dirpath):
            _delete(path)

    def _default_save(self, path: str, loop: Loop) -> None:
        try:
            checkpoint = importlib.import_module("functrain.checkpoint")
        except ModuleNotFoundError as e:
            raise RuntimeError(
                "ModelCheckpoint: expected functrain.checkpoint to write checkpoints, got "
                f"{e}. HINT: pass saver=lambda path, loop: ... to write them yourself.") from e
        meta = {"step": loop.step, "epoch": loop.epoch,
                "metrics": {k: _encode(float(v)) for k, v in loop.metrics.items()},
                "callbacks": (loop.callback_states() if getattr(loop, "callbacks", ())
                              else {self.state_key: self.state_dict()})}
        checkpoint.save(path, loop.state, meta=meta, overwrite=True)

    # -- resume --------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The bookkeeping a resumed run needs, as strict-JSON values.

        Example:
            >>> ModelCheckpoint("val/loss").state_dict()["best_k"]
            []
        """
        name = os.path.basename
        return {"monitor": self.monitor, "mode": self.mode,
                "best_k": [[_encode(s), step, name(p)] for s, step, p in self.best_k],
                "last_path": None if self.last_path is None else name(self.last_path),
                "last_step": self.last_step, "checks": self._checks}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore `state_dict`'s bookkeeping (kept checkpoints, last, check count).

        A checkpoint is restored by its name only: the run's own directory (``dirpath``, or
        ``<run_dir>/checkpoints`` once `on_run_start` knows the run) is put in front of it, so
        a resumed run, also one copied elsewhere, writes and deletes only under its own
        directory. Paths saved by older versions are reduced to their names the same way.

        Raises:
            ValueError: if the state was saved for another monitor or mode, or names a
                checkpoint that is not one of this callback's (e.g. ``"../x"``).

        Example:
            >>> ckpt = ModelCheckpoint("val/loss", save_top_k=2, dirpath="ck")
            >>> ckpt.load_state_dict({"monitor": "val/loss", "mode": "min",
            ...     "best_k": [[0.5, 10, "best-step_000000010-val_loss=0.5"],
            ...                ["NaN", 20, "best-step_000000020-val_loss=nan"]],
            ...     "last_path": None, "last_step": None, "checks": 2})
            >>> ckpt.best_k[0]
            (0.5, 10, 'ck/best-step_000000010-val_loss=0.5')
        """
        if (state.get("monitor"), state.get("mode")) != (self.monitor, self.mode):
            raise ValueError(
                f"ModelCheckpoint.load_state_dict: expected monitor={self.monitor!r}, "
                f"mode={self.mode!r}, got monitor={state.get('monitor')!r}, "
                f"mode={state.get('mode')!r}.")
        best_k = [(_decode(s), int(step), _checkpoint_name(p, f"best_k[{i}]"))
                  for i, (s, step, p) in enumerate(state["best_k"])]
        last = state.get("last_path")
        self.best_k = self._ranked(best_k)
        self.last_path = None if last is None else _checkpoint_name(last, "last_path")
        self.last_step = state.get("last_step")
        self._checks = int(state.get("checks", 0))
        self._restored = True
        if self.dirpath is not None:
            self._root_restored()

    def _root_restored(self) -> None:
        """Put the run's directory in front of the names `load_state_dict` restored."""
        if not self._restored:
            return
        self.best_k = [(s, step, os.path.join(self.dirpath, p)) for s, step, p in self.best_k]
        if self.last_path is not None:
            self.last_path = os.path.join(self.dirpath, self.last_path)
        self._restored = False


# ---------------------------------------------------------------------------------------------
# Monitors.


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
            _check_int(batch_size, "batch_size", 1)
        self.batch_size = batch_size
        self.flops_per_sample = _check_number(flops_per_sample, "flops_per_sample",
                                              positive=True)
        self.peak_flops = _check_number(peak_flops, "peak_flops", positive=True)
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


# ---------------------------------------------------------------------------------------------
# In-step helpers: values only the step can see, returned as metrics.


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
