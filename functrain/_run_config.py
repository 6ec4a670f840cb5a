"""`Logging` and `Checkpointing`: the rarely changed settings of a `fit` run, each as one value
passed among its callbacks (``fit(..., callbacks=[ft.Logging(every=10), ft.Checkpointing(100)])``,
as Lightning users pass ``ModelCheckpoint``)."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from ._errors import check_int
from .callbacks._protocol import Callback

__all__ = ["Checkpointing", "Logging"]


@dataclasses.dataclass(frozen=True)
class Logging(Callback):
    """How `functrain.fit` reports a run: ``fit(..., callbacks=[ft.Logging(every=10)])``.

    A setting passed among the callbacks (at most one): without one, `fit` uses ``Logging()``;
    ``ft.Logging.quiet()`` turns off loggers, progress bar and summary (metric windows are
    still read every 50 steps, for callbacks). `fit` replaces it by the callbacks it stands
    for (progress bar, summary) after the user's.

    Args:
        every: read, log and show the training metrics every this many steps (one host
            transfer per window), and at the end of each epoch.
        loggers: ``None``: JSONL + CSV (+ TensorBoard when installed) under ``run_dir``; or a
            list of `functrain.loggers.Logger` objects (``[]``: none).
        hparams: the run's hyperparameters, recorded by every logger at the start (with fit's
            own settings).
        progress: show a progress bar (`functrain.callbacks.ProgressBar`); ``None``: only when
            stderr is a terminal.
        summary: print the model summary at the start and the end-of-run summary
            (`functrain.callbacks.Summary`).
        sanity_eval: before the first training step of a fresh run, run ``eval_fn`` on this
            many batches of ``eval_loader`` (Lightning's ``num_sanity_val_steps``; not logged),
            so a bug in the evaluation shows in seconds instead of after an epoch; ``0``: off.

    Example:
        >>> import functrain as ft
        >>> ft.Logging(every=10, loggers=[], progress=False).every
        10
    """

    every: int = 50
    loggers: Sequence[Any] | None = None
    hparams: dict[str, Any] | None = None
    progress: bool | None = None
    summary: bool = True
    sanity_eval: int = 2

    def __post_init__(self) -> None:
        check_int("Logging.every", self.every, minimum=1)
        check_int("Logging.sanity_eval", self.sanity_eval, minimum=0)
        if self.hparams is not None and not isinstance(self.hparams, dict):
            raise TypeError(f"Logging.hparams: expected a dict or None, got "
                            f"{type(self.hparams).__name__}.")
        if self.loggers is not None and (not isinstance(self.loggers, Sequence)
                                         or isinstance(self.loggers, str)):
            raise TypeError(f"Logging.loggers: expected None or a list of loggers, got "
                            f"{type(self.loggers).__name__}.")
        for i, lg in enumerate(self.loggers or ()):
            if not all(callable(getattr(lg, m, None))
                       for m in ("log_metrics", "log_hparams", "close")):
                raise TypeError(
                    f"Logging.loggers[{i}]: expected a functrain.loggers.Logger (with "
                    f"log_metrics, log_hparams and close), got {lg!r}. HINT: e.g. "
                    "functrain.loggers.JSONLLogger('runs/x/m.jsonl'); loggers=None gives the "
                    "default ones.")

    @classmethod
    def quiet(cls, every: int = 50) -> Logging:
        """No loggers, progress bar or summary (metric windows still read every ``every`` steps,
        for callbacks).

        Example:
            >>> import functrain as ft
            >>> ft.Logging.quiet().loggers
            []
        """
        return cls(every=every, loggers=[], progress=False, summary=False)

    def make_loggers(self, run_dir: str | None) -> list[Any]:
        """The run's loggers: the given ones, or the default ones under ``run_dir``."""
        if self.loggers is not None:
            return list(self.loggers)
        from . import loggers

        assert run_dir is not None
        return loggers.default_loggers(run_dir)

    def callbacks(self) -> list[Any]:
        """The default callbacks this setting adds after the user's: progress bar, summary."""
        from .callbacks._run import ProgressBar, Summary

        return [ProgressBar(self.progress)] * (self.progress is not False) + (
            [Summary()] if self.summary else [])


@dataclasses.dataclass(frozen=True)
class Checkpointing(Callback):
    """When `functrain.fit` saves checkpoints: ``fit(..., callbacks=[ft.Checkpointing(100)])``.

    A setting passed among the callbacks (at most one); without one, `fit` writes no
    checkpoints (``resume=`` still reads them).

    A checkpoint is saved every ``every`` steps (asynchronously: the loop waits only for a host
    copy), at the end of the run, and on SIGTERM/SIGINT, under
    ``run_dir/checkpoints/step_<step>/`` (see `functrain.checkpoint`). It holds the state, the
    loop's position (`functrain.LoopState`: the place in the data, the open metric window) and
    the callbacks' state, so a resumed run (``fit(..., resume="auto")``) continues exactly
    where it stopped.

    Args:
        every: save every this many steps.
        keep: how many periodic checkpoints to keep (``None``: all).

    Example:
        >>> import functrain as ft
        >>> ft.Checkpointing(every=500, keep=2)
        Checkpointing(every=500, keep=2)
    """

    every: int
    keep: int | None = 3

    def __post_init__(self) -> None:
        check_int("Checkpointing.every", self.every, minimum=1)
        check_int("Checkpointing.keep", self.keep, minimum=1, allow_none=True)

    def due(self, step: int) -> bool:
        """Whether a periodic checkpoint is due after ``step``."""
        return step % self.every == 0
