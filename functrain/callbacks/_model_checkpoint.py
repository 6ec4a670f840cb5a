"""`ModelCheckpoint`: keep the best-k checkpoints by a monitored metric, and the last one."""

from __future__ import annotations

import importlib
import math
import os
import shutil
from collections.abc import Callable, Mapping
from typing import Any

from .._errors import check_int
from ._common import (
    _check_mode,
    _check_monitor,
    _decode,
    _encode,
    _monitored,
)
from ._protocol import Callback, Loop

__all__ = ["ModelCheckpoint"]

def _delete(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    elif os.path.lexists(path):
        os.remove(path)


def _is_inside(path: str, directory: str) -> bool:
    path, directory = os.path.abspath(path), os.path.abspath(directory)
    return os.path.commonpath([path, directory]) == directory and path != directory


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
        self.save_top_k = check_int("save_top_k", save_top_k, minimum=-1)
        if monitor is None and save_top_k not in (-1, 0, 1):
            raise ValueError(
                f"save_top_k: expected -1, 0 or 1 with monitor=None, got {save_top_k}. "
                "HINT: name the metric to rank by, e.g. ModelCheckpoint('val/loss', "
                f"save_top_k={save_top_k}).")
        if not isinstance(save_last, bool):
            raise ValueError(f"save_last: expected a bool, got {save_last!r}.")
        self.save_last = save_last
        self.every_n_evals = check_int("every_n_evals", every_n_evals, minimum=1)
        if saver is not None and not callable(saver):
            raise TypeError(f"saver: expected a callable saver(path, loop), "
                            f"got {type(saver).__name__}.")
        self.saver = saver
        self.dirpath = None if dirpath is None else os.fspath(dirpath)
        self.best_k: list[tuple[float | None, int, str]] = []
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
        return {"monitor": self.monitor, "mode": self.mode, "dirpath": self.dirpath,
                "best_k": [[_encode(s), step, p] for s, step, p in self.best_k],
                "last_path": self.last_path, "last_step": self.last_step,
                "checks": self._checks}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore `state_dict`'s bookkeeping (kept paths, last, check count).

        Raises:
            ValueError: if the state was saved for another monitor or mode.

        Example:
            >>> ckpt = ModelCheckpoint("val/loss", save_top_k=2)
            >>> ckpt.load_state_dict({"monitor": "val/loss", "mode": "min", "dirpath": "ck",
            ...     "best_k": [[0.5, 10, "ck/a"], ["NaN", 20, "ck/b"]], "last_path": None,
            ...     "last_step": None, "checks": 2})
            >>> ckpt.best_k[0], ckpt.best_path
            ((0.5, 10, 'ck/a'), 'ck/a')
        """
        if (state.get("monitor"), state.get("mode")) != (self.monitor, self.mode):
            raise ValueError(
                f"ModelCheckpoint.load_state_dict: expected monitor={self.monitor!r}, "
                f"mode={self.mode!r}, got monitor={state.get('monitor')!r}, "
                f"mode={state.get('mode')!r}.")
        self.dirpath = self.dirpath or state.get("dirpath")
        self.best_k = self._ranked([(_decode(s), int(step), str(p))
                                    for s, step, p in state["best_k"]])
        self.last_path = state.get("last_path")
        self.last_step = state.get("last_step")
        self._checks = int(state.get("checks", 0))


