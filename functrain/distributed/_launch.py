"""`launch`: start N local worker processes from Python, as torchrun would, and collect results.

For notebooks and tests. Each worker gets torchrun's variables (``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``, ...), so code inside it (``fit`` included)
sees the same environment as under ``torchrun --nproc-per-node N``. Built on
``torch.multiprocessing``; the parent watches the workers and, as soon as one fails (raises,
or dies from a signal), stops the others and raises an error naming the failed rank.
"""

from __future__ import annotations

import os
import pickle
import socket
import time
import traceback
from collections.abc import Callable, Sequence
from typing import Any

from .._errors import check_choice, check_int, check_number

__all__ = ["LaunchError", "launch"]


class LaunchError(RuntimeError):
    """A worker started by `launch` failed, or the workers ran out of time.

    Attributes:
        rank: the rank that failed first (None for a timeout).
        details: that rank's traceback, or how it ended.

    Example:
        >>> issubclass(LaunchError, RuntimeError)
        True
    """

    def __init__(self, message: str, rank: int | None = None, details: str = "") -> None:
        super().__init__(message)
        self.rank, self.details = rank, details


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(fn: Callable[..., Any], args: tuple[Any, ...], rank: int, nprocs: int,
            env: dict[str, str], results: Any) -> None:
    os.environ.update(env)
    os.environ.update({"RANK": str(rank), "LOCAL_RANK": str(rank), "GROUP_RANK": "0",
                       "ROLE_RANK": str(rank), "WORLD_SIZE": str(nprocs),
                       "LOCAL_WORLD_SIZE": str(nprocs), "ROLE_WORLD_SIZE": str(nprocs)})
    try:
        out = fn(*args)
        payload = pickle.dumps(out)
    except BaseException:  # noqa: BLE001 - reported to the parent, which raises
        results.put((rank, "error", traceback.format_exc()))
        raise SystemExit(1) from None
    finally:
        from . import _env

        _env.shutdown()
    results.put((rank, "ok", payload))


def launch(fn: Callable[..., Any], nprocs: int, *, args: Sequence[Any] = (),
           timeout: float | None = None, start_method: str = "spawn",
           env: dict[str, str] | None = None) -> list[Any]:
    """Run ``fn(*args)`` in ``nprocs`` local processes set up as torchrun's workers.

    Each worker sees ``RANK = LOCAL_RANK = i``, ``WORLD_SIZE = nprocs`` and a free
    ``MASTER_PORT`` on ``127.0.0.1``, so ``functrain.distributed.initialize()`` (and ``fit``)
    joins the group; a group still open when ``fn`` returns is destroyed.

    Args:
        fn: the worker function. With ``start_method="spawn"`` (the default, and the safe one
            in a process that has started threads) it must be importable: defined at the top
            level of a module, not in a notebook cell (use ``"fork"`` there, on Linux).
        nprocs: the number of workers.
        args: positional arguments for ``fn`` (picklable).
        timeout: seconds to wait for all workers; then they are killed and `LaunchError` is
            raised naming the ranks still running. None waits for ever.
        start_method: ``"spawn"``, ``"fork"`` or ``"forkserver"``.
        env: extra environment variables for the workers.

    Returns:
        ``fn``'s return values (picklable), by rank.

    Raises:
        LaunchError: a worker raised (its traceback is in the message), died, or the timeout
            passed. The other workers are stopped first.

    Example:
        >>> import operator, functrain as ft
        >>> ft.distributed.launch(operator.add, 1, args=(2, 3), start_method="fork")
        [5]
    """
    if not callable(fn):
        raise TypeError(f"fn: expected a callable, got {type(fn).__name__}.")
    nprocs = check_int("nprocs", nprocs, minimum=1)
    check_number("timeout", timeout, low=0, low_open=True, allow_none=True)
    check_choice("start_method", start_method, ["spawn", "fork", "forkserver"])
    import torch.multiprocessing as mp

    ctx = mp.get_context(start_method)
    results = ctx.SimpleQueue()
    base = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port()),
            "TORCHELASTIC_RUN_ID": "functrain-launch", **(env or {})}
    procs = [ctx.Process(target=_worker, args=(fn, tuple(args), r, nprocs, base, results),
                         daemon=False, name=f"functrain-rank-{r}") for r in range(nprocs)]
    for p in procs:
        p.start()
    deadline = None if timeout is None else time.monotonic() + timeout
    values: dict[int, Any] = {}
    try:
        while len(values) < nprocs:
            while not results.empty():
                r, status, payload = results.get()
                if status == "error":
                    raise LaunchError(f"launch: rank {r} of {nprocs} raised; the other ranks "
                                      f"were stopped. Its traceback:\n{payload}", r, payload)
                values[r] = pickle.loads(payload)
            for r, p in enumerate(procs):
                if r not in values and p.exitcode is not None and p.exitcode != 0:
                    time.sleep(0.2)  # its report may still be in the pipe
                    if not results.empty():
                        break
                    how = (f"was killed by signal {-p.exitcode}" if p.exitcode < 0
                           else f"exited with code {p.exitcode}")
                    raise LaunchError(f"launch: rank {r} of {nprocs} {how}; the other ranks "
                                      "were stopped.", r, how)
            if deadline is not None and time.monotonic() > deadline:
                running = [r for r in range(nprocs) if r not in values]
                raise LaunchError(f"launch: ranks {running} of {nprocs} were still running "
                                  f"after timeout={timeout} s and were killed.")
            if len(values) < nprocs:
                time.sleep(0.05)
    except BaseException:
        _stop(procs, grace=0.0)
        raise
    _stop(procs, grace=30.0)
    return [values[r] for r in range(nprocs)]


def _stop(procs: list[Any], grace: float) -> None:
    """Give the workers ``grace`` seconds to exit, then terminate them (and kill, 5 s later)."""
    end = time.monotonic() + grace
    for p in procs:
        p.join(max(0.0, end - time.monotonic()))
    for p in procs:
        if p.is_alive():
            p.terminate()
    end = time.monotonic() + 5.0
    for p in procs:
        p.join(max(0.0, end - time.monotonic()))
        if p.is_alive():
            p.kill()
            p.join()

