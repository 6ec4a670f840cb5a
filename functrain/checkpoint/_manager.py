"""`CheckpointManager`: the checkpoints of one run, the last few kept."""

from __future__ import annotations

import atexit
import os
import re
import shutil
import sys
import threading
import time
import traceback
import warnings
import weakref
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from .. import tree as _tree
from .._errors import check_int, describe
from .._version import __version__
from ._format import _MANIFEST, CheckpointError, _fsync_dir
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
    A save still running when the program exits is completed first (or, if it fails, the
    error is printed and the exit status is 1).
    "Newest" means the highest step; checkpoints of higher steps than the one being saved (from
    a run that went further) are neither counted nor deleted. On creation the manager cleans
    up after crashed saves of processes that are gone (see `functrain.checkpoint`, Atomicity).

    Args:
        directory: the checkpoint directory of the run, e.g. ``run_dir / "checkpoints"``.
        keep: how many checkpoints to keep (``None``: all).
        process_group: save cooperatively with the ranks of this group (see
            `functrain.checkpoint.save`); every rank then calls `save` at the same steps,
            saves block, and rank 0 alone evicts old checkpoints and cleans up.

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

    def __init__(self, directory: str | os.PathLike[str], *, keep: int | None = 3,
                 process_group: Any = None) -> None:
        check_int("keep", keep, minimum=1, allow_none=True,
                  hint="keep=3 keeps the three newest checkpoints.")
        from ._save import _cooperative_group

        self.directory = Path(directory)
        self.keep = keep
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self._error_path: Path | None = None
        # With a group of several ranks: every rank calls save at the same steps, saves are
        # blocking (they are collectives), rank 0 alone evicts and cleans up.
        self.process_group = _cooperative_group(process_group)
        self._main = True
        if self.process_group is not None:
            import torch.distributed as dist

            self._main = dist.get_rank(self.process_group) == 0
        if self._main:
            self._remove_stale_tmp()

    def path(self, step: int) -> Path:
        """The directory of the checkpoint of ``step`` (which may not exist).

        Example:
            >>> import tempfile
            >>> with tempfile.TemporaryDirectory() as d:
            ...     CheckpointManager(d).path(123).name
            'step_000000123'
        """
        return self.directory / f"step_{_check_step(step):09d}"

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
        step = _check_step(step)
        self.wait()
        path = self.path(step)
        if blocking or self.process_group is not None:
            self._write(path, state, meta)
            return path
        _flatten_state(state)  # validate now, in the caller's thread
        _flatten_meta(_check_meta(meta), "meta")
        state = _tree.map(_to_host, state)  # the copies the background thread owns
        meta = _tree.map(_to_host, _check_meta(meta))
        self._thread = threading.Thread(target=self._background, args=(path, state, meta),
                                        name=f"functrain-checkpoint-{step}")
        _finish_at_exit(self)
        self._thread.start()  # not a daemon; _finish_at_exit completes it before pools close
        return path

    def _background(self, path: Path, state: Any, meta: Any) -> None:
        try:
            self._write(path, state, meta)
        except BaseException as e:  # handed to the main thread by wait()
            self._error = e
            self._error_path = path

    def _write(self, path: Path, state: Any, meta: Any) -> None:
        save(path, state, meta=meta, overwrite=True, process_group=self.process_group)
        if self.keep is not None and self._main:
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

    def latest(self, *, strict: bool = False) -> Path | None:
        """The newest intact checkpoint, or ``None``; waits for a save.

        Checks checksums (`functrain.checkpoint.verify`) from the newest checkpoint down,
        skipping each incomplete or corrupt one with a warning that names it and the reason.

        Args:
            strict: when there are checkpoints but none is intact, raise instead of returning
                ``None`` (what a resume wants: not to start afresh over a corrupt run).

        Raises:
            CheckpointError: with ``strict``, if every checkpoint found is incomplete or
                corrupt; lists each with the reason it was rejected. Nothing is deleted.

        Example:
            >>> import tempfile
            >>> with tempfile.TemporaryDirectory() as d:
            ...     CheckpointManager(d).latest() is None
            True
        """
        self.wait()
        rejected: list[str] = []
        for p in reversed(self._step_dirs()):
            try:
                verify(p)
                return p
            except (CheckpointError, OSError) as e:
                rejected.append(f"  {p.name}: {e}")
                warnings.warn(f"skipping {e}", stacklevel=2)  # e names the path
        if strict and rejected:
            raise CheckpointError(
                f"checkpoints in {str(self.directory)!r}: expected at least one intact "
                f"checkpoint, got {len(rejected)}, none of them intact:\n"
                + "\n".join(rejected) + "\nHINT: nothing was deleted. Restore an intact copy "
                "into that directory, or start afresh elsewhere or with fit(..., resume=None)"
                " (which moves these aside, see CheckpointManager.set_aside).")
        return None

    def set_aside(self, after_step: int, reason: str) -> Path | None:
        """Move the checkpoints of steps above ``after_step`` out of the run's way, keeping them.

        After a rollback (a resume from an older checkpoint), or a fresh start in a directory
        that holds checkpoints (``after_step=-1``), the checkpoints that are not part of what
        this run continues would otherwise be taken for its newest (``latest``), or evicted
        or overwritten by its saves. They go, untouched, into one folder
        ``directory/aside-<UTC time>-after-<after_step>/`` with a ``README`` saying why.

        Args:
            after_step: keep the checkpoints of this step and below in place.
            reason: why, written into the folder's ``README``.

        Returns:
            The folder, or ``None`` if there was nothing to move.

        Example:
            >>> import tempfile, torch
            >>> with tempfile.TemporaryDirectory() as d:
            ...     mgr = CheckpointManager(d, keep=None)
            ...     for step in (10, 20, 30):
            ...         _ = mgr.save(step, {"w": torch.ones(1)})
            ...     aside = mgr.set_aside(10, "rolled back to step 10")
            ...     [p.name for p in mgr.all()], sorted(q.name for q in aside.iterdir())
            (['step_000000010'], ['README', 'step_000000020', 'step_000000030'])
        """
        self.wait()
        after_step = check_int("after_step", after_step, minimum=-1)
        move = [p for p in self._step_dirs() if _step_of(p) > after_step]
        if not move:
            return None
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        aside = self.directory / f"aside-{stamp}-after-{after_step}"
        n = 1
        while aside.exists():
            n += 1
            aside = self.directory / f"aside-{stamp}-after-{after_step}-{n}"
        aside.mkdir()
        (aside / "README").write_text(
            f"Checkpoints set aside by functrain {__version__} at {stamp}: {reason}\n"
            "They are intact as written; move one back into the parent directory to use it.\n",
            encoding="utf-8")
        for p in move:
            os.rename(p, aside / p.name)
        _fsync_dir(aside)
        _fsync_dir(self.directory)
        return aside

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


def _check_step(step: Any) -> int:
    """A step number: a non-negative int, or a 0-d integer tensor such as ``state.step``."""
    if isinstance(step, torch.Tensor) and step.dim() == 0 and not (
            step.is_floating_point() or step.is_complex() or step.dtype == torch.bool):
        step = int(step)
    elif isinstance(step, torch.Tensor):
        raise TypeError(f"step: expected an int or a 0-d integer tensor, got "
                        f"{describe(step)}. HINT: pass state.step or int(state.step).")
    return check_int("step", step, minimum=0, hint="checkpoints are named by their step, "
                     "e.g. mgr.save(int(state.step), state).")


# Managers with a background save that may still run when the interpreter exits.
_AT_EXIT: weakref.WeakSet[CheckpointManager] = weakref.WeakSet()
_EXIT_HOOK = [False]


def _finish_at_exit(manager: CheckpointManager) -> None:
    """Make sure ``manager``'s background save completes, or fails loudly, at exit.

    At a normal interpreter exit, ``concurrent.futures`` refuses new work (threading's exit
    hooks run before non-daemon threads are joined), which a save still in progress needs
    (DCP's and the checksums' thread pools), so it would fail unseen. functrain's own hook,
    registered after ``concurrent.futures``' and so run before it, waits for each pending save
    while the pools still work; if one failed, it prints the error and exits with status 1.
    """
    _AT_EXIT.add(manager)
    if _EXIT_HOOK[0]:
        return
    register = getattr(threading, "_register_atexit", None)  # CPython >= 3.9
    try:
        (register or atexit.register)(_finish_pending_saves)
        _EXIT_HOOK[0] = True
    except RuntimeError:  # already shutting down: the thread is joined as non-daemon
        pass


def _finish_pending_saves() -> None:
    failed = False
    for manager in list(_AT_EXIT):
        if manager._thread is not None:
            manager._thread.join()
            manager._thread = None
        if manager._error is not None:
            err, manager._error = manager._error, None
            where = manager._error_path or manager.directory
            print(f"functrain: the checkpoint {str(where)!r} was NOT written: a background save"
                  " failed while the program was exiting:", file=sys.stderr)
            traceback.print_exception(type(err), err, err.__traceback__, file=sys.stderr)
            failed = True
    if failed:  # never let an exit status of 0 report a save that did not happen
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(1)


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
