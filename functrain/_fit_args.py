"""`fit`'s arguments: checked before the first step, the settings (`Logging`,
`Checkpointing`) taken out of its callbacks, and the training runner built from them."""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

from ._data_helpers import loader_len
from ._errors import check_int, check_number, describe
from ._evaluate import check_loader, eager, runner_for
from ._run_config import Checkpointing, Logging
from ._runner import CompiledStep
from .callbacks._protocol import Callback
from .precision import Policy

__all__ = ["FitArgs", "check_fit_args", "training_runner"]

# Arguments `fit` no longer takes, and what replaced them (nothing was released: no alias).
MOVED = {
    "log": "callbacks=[ft.Logging(every=10)] (ft.Logging.quiet() for no loggers, progress "
           "bar or summary)",
    "checkpoint": "callbacks=[ft.Checkpointing(every=1000, keep=3)]",
}


class FitArgs:
    """What `check_fit_args` makes of `fit`'s arguments: the user's callbacks, the settings
    found among them, and when to evaluate."""

    def __init__(self, callbacks: list[Callback], log: Logging,
                 checkpoint: Checkpointing | None, eval_steps: int | None,
                 eval_in_epoch: int | None) -> None:
        self.callbacks, self.log, self.checkpoint = callbacks, log, checkpoint
        self.eval_steps, self.eval_in_epoch = eval_steps, eval_in_epoch


def moved_keyword(kwargs: dict[str, Any]) -> None:
    """Raise for an argument `fit` moved into ``callbacks`` (``log=``, ``checkpoint=``)."""
    for name, hint in MOVED.items():
        if name in kwargs:
            raise TypeError(f"fit: unexpected argument {name}={describe(kwargs[name])}: "
                            f"expected it among the callbacks. HINT: {hint}.")


def check_fit_args(loader: Iterable[Any], *, epochs: Any, max_steps: Any, eval_fn: Any,
                   eval_loader: Any, eval_every: Any, callbacks: Any, run_dir: Any,
                   resume: Any) -> FitArgs:
    """Check `fit`'s arguments (naming the one at fault) before any step."""
    if epochs is None and max_steps is None:
        raise ValueError("fit needs epochs or max_steps (or both); got neither. "
                         "HINT: fit(step, state, loader, epochs=10).")
    check_int("epochs", epochs, minimum=1, allow_none=True)
    check_int("max_steps", max_steps, minimum=1, allow_none=True)
    check_loader(loader, "loader")
    eval_steps, eval_in_epoch = _eval_every(eval_every, loader)
    if (eval_fn is None) != (eval_loader is None):
        raise ValueError("eval_fn and eval_loader go together: got "
                         f"eval_fn={'set' if eval_fn else None}, "
                         f"eval_loader={'set' if eval_loader is not None else None}.")
    if eval_loader is not None:
        check_loader(eval_loader, "eval_loader")
    user, log, checkpoint = _settings(callbacks)
    if eval_fn is None:
        if eval_every is not None:
            raise ValueError(f"eval_every={eval_every}: expected eval_fn and eval_loader to "
                             "evaluate with, got neither. HINT: pass eval_fn=..., "
                             "eval_loader=..., or drop eval_every.")
        for i, cb in enumerate(callbacks):
            monitor = getattr(cb, "monitor", None)
            if isinstance(monitor, str) and monitor.startswith("val/"):
                raise ValueError(
                    f"callbacks[{i}]: {type(cb).__name__} monitors {monitor!r}, expected an "
                    "evaluation to produce it, got no eval_fn. HINT: pass eval_fn and "
                    "eval_loader, or monitor a training metric ('train/loss').")
    if run_dir is not None and (not isinstance(run_dir, (str, os.PathLike))
                                or not os.fspath(run_dir)):
        raise ValueError(f"run_dir: expected a directory path or None, got "
                         f"{describe(run_dir)}. HINT: run_dir='runs/exp1'; None picks "
                         "runs/<date>-<time>.")
    if resume is not None and (isinstance(resume, bool) or not (
            resume == "auto" or isinstance(resume, (str, os.PathLike)))):
        raise TypeError(f"resume: expected 'auto', a checkpoint path or None, got "
                        f"{describe(resume)}. HINT: resume='auto' continues from the newest "
                        "intact checkpoint in run_dir/checkpoints.")
    if resume == "auto" and run_dir is None:
        raise ValueError("resume='auto' needs run_dir: it looks for checkpoints in "
                         "run_dir/checkpoints. HINT: fit(..., run_dir='runs/exp1', "
                         "resume='auto').")
    return FitArgs(user, log, checkpoint, eval_steps, eval_in_epoch)


def _settings(callbacks: Any) -> tuple[list[Callback], Logging, Checkpointing | None]:
    """The user's callbacks, and the `Logging` / `Checkpointing` among them (one of each)."""
    if isinstance(callbacks, Callback) or not isinstance(callbacks, (list, tuple)):
        raise TypeError(f"callbacks: expected a list of functrain.Callback objects, got "
                        f"{describe(callbacks)}. HINT: callbacks=[cb] for one.")
    found: dict[type, list[int]] = {Logging: [], Checkpointing: []}
    user = []
    for i, cb in enumerate(callbacks):
        if not isinstance(cb, Callback):
            raise TypeError(f"callbacks[{i}]: expected a functrain.Callback, "
                            f"got {type(cb).__name__}.")
        kind = next((k for k in found if isinstance(cb, k)), None)
        if kind is None:
            user.append(cb)
        else:
            found[kind].append(i)
    for kind, where in found.items():
        if len(where) > 1:
            raise ValueError(f"callbacks: expected at most one functrain.{kind.__name__}, got "
                             f"{len(where)} (callbacks[{where[0]}] and callbacks[{where[1]}]). "
                             "HINT: one value holds every setting of its kind.")
    log = callbacks[found[Logging][0]] if found[Logging] else Logging()
    checkpoint = callbacks[found[Checkpointing][0]] if found[Checkpointing] else None
    return user, log, checkpoint


def training_runner(step_fn: Any, device: Any, precision: Any, compile: Any,
                    check_finite: bool) -> CompiledStep:
    """The runner `fit` trains with: ``step_fn`` itself if it is one, else a cached one."""
    if isinstance(step_fn, CompiledStep):
        given = [name for name, value, default in (("device", device, "auto"),
                 ("precision", precision, "32"), ("compile", compile, "auto"))
                 if value != default]
        if given:
            raise ValueError(f"{', '.join(given)}: set them on the runner passed as step_fn, "
                             "not on fit. HINT: ft.compile_step(step, device=..., precision="
                             "..., compile=...).")
        if check_finite and not step_fn.check_finite:
            raise ValueError("callbacks: a NonFiniteGuard needs a runner that checks each step "
                             "for inf/NaN. HINT: ft.compile_step(step, check_finite=True).")
        step_fn.begin_run()
        return step_fn
    if not callable(step_fn):
        raise TypeError(f"step_fn: expected a callable step_fn(state, batch) -> (state, "
                        f"metrics), got {type(step_fn).__name__}.")
    if isinstance(step_fn, eager):  # marked: runs eagerly, as compile="eager"
        step_fn, compile = step_fn.fn, "eager"
    policy = precision if isinstance(precision, Policy) else Policy.from_name(precision)
    return runner_for(step_fn, compile=compile, device=device, donate=True, precision=policy,
                      check_finite=check_finite)


def _eval_every(eval_every: Any, loader: Any) -> tuple[int | None, int | None]:
    """``(every this many steps, every this many batches of an epoch)`` from ``eval_every``:
    an int is steps; a float in (0, 1) is a fraction of an epoch (``len(loader)``)."""
    if isinstance(eval_every, float):
        check_number("eval_every", eval_every, low=0.0, high=1.0, low_open=True,
                     high_open=True, hint="an int is a number of steps; a float in (0, 1) a "
                     "fraction of an epoch, e.g. 0.25 evaluates four times per epoch.")
        n = loader_len(loader)
        if n is None:
            raise TypeError(f"eval_every: a fraction of an epoch ({eval_every!r}) needs a loader "
                            "with a length. HINT: pass a number of steps (an int).")
        return None, max(1, round(eval_every * n))
    return check_int("eval_every", eval_every, minimum=1, allow_none=True,
                     hint="an int is a number of steps; a float in (0, 1) a fraction of an "
                     "epoch."), None

