"""`CheckpointManager`: the checkpoints of one run, the last few kept."""

from __future__ import annotations

import os
import re
import shutil
import threading
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from .. import tree as _tree
from .._errors import check_int
from ._format import _MANIFEST, CheckpointError
from ._restore import verify
from ._save import _check_meta, _flatten_meta, _flatten_state, _remove, save

# ---------------------------------------------------------------------------------------------
# A run's checkpoints


class CheckpointManager:
    """The checkpoints of one run in ``directory``: ``step_000000123/``, the last ``keep`` kept.

    `save` writes ``directory/step_<step, 9 digits>`` with `functrain.checkpoint.save` and then
    deletes the oldest checkpoints beyond ``keep``: only after the new one is completely
    written, so a crash never leaves fewer than before. ``save(..., blocking=False)`` copies the
    tensors to host memory at once (so the next step may overwrite the state) and writes in a
    background thread; an error there is raised by the next `save`, `wait`, `all` or `latest`.
    "Newest" means the highest step; checkpoints of higher steps than the one being saved (from
    a run that went further) are neither counted nor deleted. On creation the manager cleans
    up after crashed saves of processes that are gone (see `functrain.checkpoint`, Atomicity).

    Args:
        directory: the checkpoint directory of the run, e.g. ``run_dir / "checkpoints"``.
        keep: how many checkpoints to keep (``None``: all).

    Example:
        >>> import tempfile, torch, functrain as ft
        >>> state = ft.TrainState.create(torch.nn.Linear(2, 1), ft.optim.sgd(0.1))
        >>> with tempfile.TemporaryDirectory() as d:
        ...     mgr = ft.checkpoint.CheckpointManager(d, keep=2)
        ...     for step in (10, 20, 30):
        ...         _ = mgr.save(step, state, meta={"epoch": step // 10})
        ...     [p.name for p in mgr.all()], mgr.latest().name
        (['step_000000020', 'step_000000030'], 'step_000000030')
    """

    def __init__(self, directory: str | os.PathLike[str], *, keep: int | None = 3) -> None:
        check_int("keep", keep, minimum=1, allow_none=True,
                  hint="keep=3 keeps the three newest checkpoints.")
        self.directory = Path(directory)
        self.keep = keep
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self._remove_stale_tmp()

    def path(self, step: int) -> Path:
        """The directory of the checkpoint of ``step`` (which may not exist).

        Example:
            >>> import tempfile
            >>> with tempfile.TemporaryDirectory() as d:
            ...     CheckpointManager(d).path(123).name
            'step_000000123'
        """
        return self.directory / f"step_{int(step):09d}"

    def save(self, step: int | torch.Tensor, state: Any, meta: Mapping[str, Any] | None = None,
             *, blocking: bool = True) -> Path:
        """Save ``state`` and ``meta`` as the checkpoint of ``step``, then evict old ones.

        Waits for a previous non-blocking save first (and raises its error, if any). A
        checkpoint of the same step is replaced.

        Args:
            step: the step number (an int or a 0-d integer tensor, e.g. ``state.step``).
            state: the pytree to save (see `functrain.checkpoint.save`).
            meta: the loop's state (see `functrain.checkpoint.save`).
            blocking: ``False``: copy the tensors to host memory now and write in a
                background thread; `wait` joins it. Needs host memory for one more copy of
                the state.

        Returns:
            The checkpoint's directory (complete once the save, or `wait`, has returned).

        Example:
            >>> import tempfile, torch, functrain as ft
            >>> with tempfile.TemporaryDirectory() as d:
            ...     mgr = ft.checkpoint.CheckpointManager(d)
            ...     p = mgr.save(1, {"w": torch.ones(3)}, blocking=False)
            ...     mgr.wait()
            ...     ft.checkpoint.restore(p, like={"w": torch.zeros(3)})
            {'w': tensor([1., 1., 1.])}
        """
        self.wait()
        step = int(step)
        if step < 0:
            raise ValueError(f"step: expected an int >= 0, got {step}.")
        path = self.path(step)
        if blocking:
            self._write(path, state, meta)
            return path
        _flatten_state(state)  # validate now, in the caller's thread
        _flatten_meta(_check_meta(meta), "meta")
        state = _tree.map(_to_host, state)  # the copies the background thread owns
        meta = _tree.map(_to_host, _check_meta(meta))
        self._thread = threading.Thread(target=self._background, args=(path, state, meta),
                                        name=f"functrain-checkpoint-{step}")
        self._thread.start()  # not a daemon: the interpreter waits for it at exit
        return path

    def _background(self, path: Path, state: Any, meta: Any) -> None:
        try:
            self._write(path, state, meta)
        except BaseException as e:  # handed to the main thread by wait()
            self._error = e

    def _write(self, path: Path, state: Any, meta: Any) -> None:
        save(path, state, meta=meta, overwrite=True)
        if self.keep is not None:
            step = int(path.name.removeprefix("step_"))
            done = [p for p in self._step_dirs() if (p / _MANIFEST).exists()]
            kept = [p for p in done if _step_of(p) <= step][-self.keep:]
            oldest = _step_of(kept[0]) if kept else step
            for p in self._step_dirs():
                if _step_of(p) < oldest:
                    shutil.rmtree(p, ignore_errors=True)

    def wait(self) -> None:
        """Wait for a non-blocking save to finish; raise the error it ended with, if any.

        Example:
            >>> import tempfile
            >>> with tempfile.TemporaryDirectory() as d:
            ...     CheckpointManager(d).wait()  # nothing pending: returns at once
        """
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._error is not None:
            err, self._error = self._error, None
            raise err

    def all(self) -> list[Path]:
        """The complete checkpoints (those with a manifest), oldest first; waits for a save.

        Does not verify checksums (`latest` does).

        Example:
            >>> import tempfile
            >>> with tempfile.TemporaryDirectory() as d:
            ...     CheckpointManager(d).all()
            []
        """
        self.wait()
        return [p for p in self._step_dirs() if (p / _MANIFEST).is_file()]

    def latest(self) -> Path | None:
        """The newest intact checkpoint, or ``None``; waits for a save.

        Checks checksums (`functrain.checkpoint.verify`) from the newest checkpoint down,
        skipping each incomplete or corrupt one with a warning that names it and the reason.

        Example:
            >>> import tempfile
            >>> with tempfile.TemporaryDirectory() as d:
            ...     CheckpointManager(d).latest() is None
            True
        """
        self.wait()
        for p in reversed(self._step_dirs()):
            try:
                verify(p)
                return p
            except CheckpointError as e:
                warnings.warn(f"skipping {e}", stacklevel=2)  # e names the path
        return None

    def _step_dirs(self) -> list[Path]:
        if not self.directory.is_dir():
            return []
        return sorted((p for p in self.directory.iterdir()
                       if p.is_dir() and _STEP_DIR.fullmatch(p.name)), key=_step_of)

    def _remove_stale_tmp(self) -> None:
        """Clean up after saves that crashed: ``.tmp-<name>-<pid>`` / ``.old-<name>-<pid>``
        directories whose process is gone.

        One that holds a complete checkpoint (a manifest) whose ``<name>`` is missing (a crash
        between the two renames of an overwrite) is moved back into place; the rest are
        deleted. Assumes the directory is written from this host only (true while one process
        writes checkpoints); the distributed runner will need a per-host marker.
        """
        if not self.directory.is_dir():
            return
        for p in sorted(self.directory.iterdir(), key=lambda p: not p.name.startswith(".tmp")):
            m = _TMP_DIR.fullmatch(p.name)
            if not m or _pid_alive(int(m.group(2))):
                continue
            target = self.directory / m.group(1)
            if (p / _MANIFEST).is_file() and not target.exists():
                os.rename(p, target)
            else:
                _remove(p)


_STEP_DIR = re.compile(r"step_\d+")
_TMP_DIR = re.compile(r"\.(?:tmp|old)-(.+)-(\d+)")


def _step_of(p: Path) -> int:
    return int(p.name.removeprefix("step_"))


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _to_host(x: Any) -> Any:
    if not isinstance(x, torch.Tensor):
        return x
    return x.detach().to("cpu", copy=True)
