"""The callbacks every `fit` run gets by default (progress bar, summary) and the non-finite
guard: what a run reports and checks, kept out of the loop itself."""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Mapping
from typing import Any

import torch

from .. import tree as _tree
from .._errors import check_choice
from .._progress import ProgressBar as _Bar
from .._progress import format_summary
from ._protocol import Callback, Loop

__all__ = ["NonFiniteGuard", "ProgressBar", "Summary"]


class ProgressBar(Callback):
    """A progress bar of the run's steps, epoch (counted from 1, as users count them, out of
    ``epochs`` when given: ``epoch=2/10``), latest training and validation metrics, samples/s
    and ETA.

    Updated once per log window (no extra host syncs); evaluations print a line under it and
    their values stay in the bar. samples/s is the steady rate after the first log window
    (which holds the compile): the figure the end-of-run `Summary` reports.

    Args:
        enabled: ``True``/``False`` to force it on/off; ``None`` shows it only when stderr is a
            terminal.

    Example:
        >>> import functrain as ft
        >>> bar = ft.callbacks.ProgressBar(enabled=False)
        >>> loop = ft.Loop(state=None, step=0, epoch=0, total_steps=100)
        >>> bar.on_run_start(loop); loop.step = 10
        >>> bar.on_log(loop, {"train/loss": 0.5}); bar.on_run_end(loop)
    """

    def __init__(self, enabled: bool | None = None) -> None:
        self.enabled = enabled
        self._bar: _Bar | None = None
        self._step = self._samples = 0

    def on_run_start(self, loop: Loop) -> None:
        total = None if loop.total_steps is None else max(loop.total_steps - loop.step, 0)
        self._bar = _Bar(total=total, enabled=self.enabled, epochs=loop.total_epochs)
        self._step, self._samples = loop.step, loop.samples

    def on_log(self, loop: Loop, metrics: dict[str, float]) -> None:
        if self._bar is None:
            return
        self._bar.update(loop.step - self._step,
                         {k.removeprefix("train/"): v for k, v in metrics.items()},
                         samples=loop.samples - self._samples, epoch=loop.epoch + 1,
                         now=loop.log_time)
        self._step, self._samples = loop.step, loop.samples

    def show_status(self, text: str | None) -> None:
        """Show ``text`` in the bar until the next log window (`fit` shows ``"compiling (N
        s)"`` while the step compiles); ``None`` clears it.

        Example:
            >>> import functrain as ft
            >>> ft.callbacks.ProgressBar(enabled=False).show_status("compiling (1 s)")
        """
        if self._bar is not None:
            self._bar.status(text)

    def on_eval(self, loop: Loop, metrics: dict[str, float]) -> None:
        if self._bar is not None:
            self._bar.metrics.update(metrics)  # the latest validation values stay in the bar
            self._bar.write(" ".join(f"{k}={v:.4g}" for k, v in metrics.items())
                            + f" (step {loop.step})")

    def on_run_end(self, loop: Loop) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def higher_is_better(name: str) -> bool:
    """Whether a metric called ``name`` improves upwards (accuracy, F1, AUC, score...)."""
    low = name.lower()
    return any(w in low for w in ("acc", "f1", "precision", "recall", "auc", "score"))


class Summary(Callback):
    """Prints the model summary at the start (`functrain.model_summary`: parameters per
    top-level module, frozen ones, bytes of params, buffers and optimizer state) and the
    end-of-run summary: steps, epochs, samples, wall time, samples/s, the last and best value
    of every metric, why the run stopped, the compile count and the time the compiles took
    (first calls included).

    Counted as users count them: steps and samples since the run began (a resumed run
    continues the counts of its checkpoint, and says at which step it resumed), the epoch
    from 1 (out of ``epochs``). samples/s is the steady rate, the progress bar's figure: the
    samples after the first log window over the time from its end to the last log window
    (the first window holds the compile, reported on its own); with a single window, the
    whole run's rate, said so.

    The best evaluation values are part of its checkpointed state, so a resumed run reports
    the best over the whole run. Nothing is printed when the run ends with an error.

    Example:
        >>> import functrain as ft
        >>> summary = ft.callbacks.Summary()
        >>> summary.on_eval(ft.Loop(state=None, step=5, epoch=0), {"val/acc": 0.9})
        >>> summary.state_dict()
        {'best': {'val/acc': 0.9}}
    """

    def __init__(self) -> None:
        self.best: dict[str, float] = {}
        self._start_step = self._start_samples = 0
        self._t0 = time.perf_counter()
        self._windows: list[tuple[float, int]] = []  # (time, samples) of the first, last log

    def state_dict(self) -> dict[str, Any]:
        return {"best": dict(self.best)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.best = dict(state.get("best", {}))

    def on_run_start(self, loop: Loop) -> None:
        """Print the model summary (`functrain.model_summary`) of a state with a module."""
        self._start_step, self._t0 = loop.step, time.perf_counter()
        self._start_samples, self._windows = loop.samples, []
        state = loop.state
        if getattr(state, "module", None) is not None and isinstance(
                getattr(state, "params", None), dict):
            from .._summary import model_summary

            print(model_summary(state))

    def on_log(self, loop: Loop, metrics: dict[str, float]) -> None:
        now = time.perf_counter() if loop.log_time is None else loop.log_time
        self._windows[1:] = [(now, loop.samples)]  # keep the first and the last

    def on_eval(self, loop: Loop, metrics: dict[str, float]) -> None:
        for k, v in metrics.items():
            if math.isfinite(v):
                better = max if higher_is_better(k) else min
                self.best[k] = better(self.best.get(k, v), v)

    def on_run_end(self, loop: Loop) -> None:
        if loop.error is not None:
            return
        wall = time.perf_counter() - self._t0
        report: dict[str, Any] = {
            "steps": loop.step - loop.run_start,
            "epochs": f"{loop.epoch + 1}" + (f" of {loop.total_epochs}"
                                             if loop.total_epochs else ""),
            "samples": loop.samples, "wall_time": wall}
        if self._start_step > loop.run_start:
            report["resumed at step"] = self._start_step
        if len(self._windows) == 2 and self._windows[1][0] > self._windows[0][0]:
            (t0, n0), (t1, n1) = self._windows
            report["samples/s"] = (f"{(n1 - n0) / (t1 - t0):,.1f} (after the first log window, "
                                   "which holds the compile)")
        elif wall > 0:
            session = loop.samples - self._start_samples
            report["samples/s"] = f"{session / wall:,.1f} (the whole run, compile included)"
        report.update(last=dict(loop.metrics), best=self.best)
        if loop.stop_reason:
            report["stopped"] = loop.stop_reason
        if loop.compiles:
            report["compiles"] = loop.compiles
            report["compile time"] = f"{loop.compile_time:.1f} s"
        if loop.compile_note:  # compile="auto" in the background (also when it stayed eager)
            report["compiled"] = loop.compile_note
        elif loop.compiles:
            hits = loop.compile_cache_hits
            report["compiled"] = (f"warm: {hits} of {loop.compiles} loaded from the step cache"
                                  if hits else "cold: traced and compiled")
        print(format_summary(report))


class NonFiniteGuard(Callback):
    """Watch every step for inf/NaN in its metrics and new params, and act on the first one.

    With this callback, `fit` has the compiled step test each step on the device and record
    the first bad step in the metric window, read with it (no extra host sync); the guard acts
    when that window is logged:

    * ``"raise"``: raise ``FloatingPointError`` naming the step and the first non-finite
      metric or param leaf (checkpoints already written are kept);
    * ``"stop"``: end training at this log window;
    * ``"skip"``: warn. To also skip such updates, wrap the optimizer in
      `functrain.optim.apply_if_finite`: with it a step with non-finite gradients leaves params
      and optimizer state unchanged.

    Args:
        action: ``"raise"``, ``"stop"`` or ``"skip"``.

    Example:
        >>> import functrain as ft
        >>> guard = ft.callbacks.NonFiniteGuard("stop")
        >>> loop = ft.Loop(state=None, step=8, epoch=0, nonfinite_step=6)
        >>> guard.on_log(loop, {"train/loss": float("nan")}); loop.stop_reason
        'non-finite values at step 6: metric train/loss = nan'
    """

    def __init__(self, action: str = "raise") -> None:
        self.action = check_choice("action", action, ("raise", "stop", "skip"))
        self._skips_reported = 0

    def on_log(self, loop: Loop, metrics: dict[str, float]) -> None:
        if not loop.nonfinite_step:
            return
        what = next((f"metric {k} = {v}" for k, v in metrics.items() if not math.isfinite(v)),
                    None)
        if what is None:
            params = getattr(loop.state, "params", {})
            what = next((f"{p} holds inf/NaN" for p, x in _tree.leaves_with_path(
                params, "state.params") if not bool(torch.isfinite(x).all())),
                "a non-finite value")
        msg = f"non-finite values at step {loop.nonfinite_step}: {what}"
        if self.action == "raise":
            raise FloatingPointError(msg + ". HINT: lower the learning rate, clip gradients, "
                                     "or skip such steps: wrap the optimizer in "
                                     "functrain.optim.apply_if_finite and pass "
                                     "NonFiniteGuard('skip').")
        if self.action == "stop":
            loop.request_stop(msg)
            return
        # "skip": say what happened. apply_if_finite counts the updates it skipped.
        skipped = _skipped_updates(getattr(loop.state, "opt_state", None))
        new, self._skips_reported = skipped - self._skips_reported, skipped
        if loop.nonfinite_params_step:
            warnings.warn(f"functrain: the params became non-finite at step "
                          f"{loop.nonfinite_params_step} ({what}); no more checkpoints are "
                          "written in this run. HINT: wrap the optimizer in "
                          "functrain.optim.apply_if_finite, lower the learning rate or clip "
                          "gradients.", stacklevel=2)
        elif new:
            warnings.warn(f"functrain: skipped the update of a step with {msg} ({new} "
                          "update(s) with non-finite gradients skipped in this log window; "
                          "params and optimizer state were kept).", stacklevel=2)
        else:
            warnings.warn(f"functrain: {msg}; the update was applied: its gradients were "
                          "finite (apply_if_finite skips only updates with non-finite "
                          "gradients).", stacklevel=2)


def _skipped_updates(opt_state: Any) -> int:
    """``apply_if_finite``'s count of skipped updates in ``opt_state`` (0 if none wraps it)."""
    node = opt_state
    while node is not None:
        if hasattr(node, "total_notfinite"):
            return int(node.total_notfinite)
        node = (node.inner_opt_state if hasattr(node, "inner_opt_state")
                else getattr(node, "inner_state", None))
    return 0
