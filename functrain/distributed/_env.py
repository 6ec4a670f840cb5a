"""Where this process stands in a distributed run: torchrun's variables and the process group.

`environment` reads what ``torchrun`` (torch elastic) sets for every worker; `initialize` starts
the default process group from it (NCCL for CUDA, gloo otherwise; each rank on its local GPU);
`rank`, `world_size`, `local_rank` and `is_main` answer for the group once it is up (rank 0 of 1
before that, so single-process code runs unchanged).
"""

from __future__ import annotations

import dataclasses
import datetime
import os
from typing import Any

import torch

from .._errors import check_choice, check_number

__all__ = ["DEFAULT_TIMEOUT", "Environment", "device", "environment", "initialize", "is_main",
           "local_rank", "rank", "shutdown", "world_size"]

DEFAULT_TIMEOUT = 300.0
"""Seconds a collective waits for the other ranks before it fails (``initialize(timeout=)``).

A rank that dies is noticed sooner: torchrun (or `functrain.distributed.launch`) stops the
others as soon as one worker exits with an error, and gloo fails a collective whose peer closed
its connection. The timeout bounds the remaining case, a rank that hangs."""

_REQUIRED = ("RANK", "WORLD_SIZE")


@dataclasses.dataclass(frozen=True)
class Environment:
    """This worker's place in a run, as torchrun describes it.

    Attributes:
        rank: global rank, ``0 <= rank < world_size``.
        world_size: number of workers in the run (all nodes).
        local_rank: rank on this node; picks the GPU.
        local_world_size: workers on this node.
        master_addr: address of rank 0's rendezvous store (``MASTER_ADDR``), or None.
        master_port: its port (``MASTER_PORT``), or None.

    Example:
        >>> env = Environment(rank=1, world_size=2, local_rank=1, local_world_size=2,
        ...                   master_addr="127.0.0.1", master_port=29500)
        >>> env.is_main, env.world_size
        (False, 2)
    """

    rank: int
    world_size: int
    local_rank: int
    local_world_size: int
    master_addr: str | None = None
    master_port: int | None = None

    @property
    def is_main(self) -> bool:
        """True on rank 0, the rank that logs and reports."""
        return self.rank == 0


def _int_var(env: dict[str, str], name: str, default: int | None = None) -> int:
    raw = env.get(name)
    if raw is None:
        if default is None:
            raise ValueError(f"{name}: expected an int in the environment, got nothing.")
        return default
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"environment variable {name}: expected an int, got {raw!r}. HINT: "
                         "start the script with torchrun, which sets it.") from None


def environment(env: dict[str, str] | None = None) -> Environment | None:
    """Read torchrun's variables (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ...).

    Args:
        env: the variables to read; default ``os.environ``.

    Returns:
        An `Environment`, or None when ``RANK`` and ``WORLD_SIZE`` are not both set (a plain
        ``python script.py``).

    Raises:
        ValueError: a variable is not an int, or the ranks are out of range.

    Example:
        >>> environment({}) is None
        True
        >>> environment({"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1"}).local_rank
        1
    """
    env = dict(os.environ if env is None else env)
    if not all(k in env for k in _REQUIRED):
        return None
    rank_, world = _int_var(env, "RANK"), _int_var(env, "WORLD_SIZE")
    local = _int_var(env, "LOCAL_RANK", rank_)
    local_world = _int_var(env, "LOCAL_WORLD_SIZE", world)
    if world < 1 or not 0 <= rank_ < world:
        raise ValueError(f"RANK={rank_}, WORLD_SIZE={world}: expected 0 <= RANK < WORLD_SIZE.")
    if not 0 <= local < local_world:
        raise ValueError(f"LOCAL_RANK={local}, LOCAL_WORLD_SIZE={local_world}: expected "
                         "0 <= LOCAL_RANK < LOCAL_WORLD_SIZE.")
    port = env.get("MASTER_PORT")
    return Environment(rank=rank_, world_size=world, local_rank=local,
                       local_world_size=local_world, master_addr=env.get("MASTER_ADDR"),
                       master_port=_int_var(env, "MASTER_PORT") if port else None)


def _dist() -> Any:
    import torch.distributed as dist

    return dist


def _initialized() -> bool:
    dist = _dist()
    return dist.is_available() and dist.is_initialized()


def initialize(backend: str = "auto", *, timeout: float = DEFAULT_TIMEOUT) -> Environment:
    """Start the default process group from torchrun's environment (idempotent).

    With ``backend="auto"``: on a machine with CUDA, each rank takes GPU ``LOCAL_RANK``
    (``torch.cuda.set_device``) and the group runs NCCL for CUDA tensors and gloo for CPU
    tensors; without CUDA it runs gloo. A group that is already initialised (by this function
    or by the user) is kept as it is.

    Args:
        backend: ``"auto"``, ``"gloo"``, ``"nccl"`` or any backend string
            ``torch.distributed.init_process_group`` accepts (e.g. ``"cpu:gloo,cuda:nccl"``).
        timeout: seconds a collective may wait for the other ranks before it raises
            (`DEFAULT_TIMEOUT` = 300).

    Returns:
        This process's `Environment`.

    Raises:
        RuntimeError: the process was not started by torchrun (no ``RANK``/``WORLD_SIZE``) or
            has no ``MASTER_ADDR``/``MASTER_PORT``, or torch was built without distributed.

    Example:
        >>> import functrain as ft
        >>> ft.distributed.world_size()   # no group in a plain process: one rank
        1
    """
    check_number("timeout", timeout, low=0, low_open=True)
    dist = _dist()
    if not dist.is_available():
        raise RuntimeError("initialize: this torch build has no torch.distributed.")
    env = environment()
    if _initialized():
        if env is None:
            env = Environment(dist.get_rank(), dist.get_world_size(), dist.get_rank(),
                              dist.get_world_size())
        return env
    if env is None:
        raise RuntimeError(
            "initialize: RANK and WORLD_SIZE are not set, so this process was not started by "
            "torchrun. HINT: run `torchrun --nproc-per-node N script.py`, or start N local "
            "processes with functrain.distributed.launch(fn, N).")
    missing = [k for k in ("MASTER_ADDR", "MASTER_PORT") if not os.environ.get(k)]
    if missing:
        raise RuntimeError(f"initialize: {' and '.join(missing)} not set. HINT: torchrun sets "
                           "them; by hand, set them to rank 0's address and a free port.")
    if backend == "auto":
        cuda = torch.cuda.is_available() and env.local_rank < torch.cuda.device_count()
        backend = "cpu:gloo,cuda:nccl" if cuda else "gloo"
    elif not isinstance(backend, str):
        check_choice("backend", backend, ["auto", "gloo", "nccl"])
    if "nccl" in backend:
        torch.cuda.set_device(env.local_rank)
    dist.init_process_group(backend=backend, rank=env.rank, world_size=env.world_size,
                            timeout=datetime.timedelta(seconds=timeout),
                            store=_restart_store(env, timeout))
    global _STARTED_HERE
    _STARTED_HERE = True
    return env


_STARTED_HERE = False


def _restart_store(env: Environment, timeout: float) -> Any:
    """Under torchrun, the agent's store seen through a prefix of this restart round; else None
    (``init_process_group`` then builds its store from ``MASTER_ADDR``/``MASTER_PORT``).

    torchrun's agent hosts one TCPStore for its workers and keeps it across restarts
    (``--max-restarts``), while torch 2.14's workers connect to it without a per-round
    prefix: the workers of a restarted round found the keys of the round before, and gloo's
    ranks read each other's old addresses and connected to sockets of dead processes
    ("Connection refused", or a hang when the port had been reused). Measured here: the
    restarted round saw the 3 keys of the killed one before it wrote any. A prefix per round
    (``TORCHELASTIC_RESTART_COUNT``) gives each round keys of its own.
    """
    restart = os.environ.get("TORCHELASTIC_RESTART_COUNT")
    if (restart is None or os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True"
            or env.master_addr is None or env.master_port is None):
        return None
    dist = _dist()
    store = dist.TCPStore(env.master_addr, env.master_port, env.world_size, is_master=False,
                          timeout=datetime.timedelta(seconds=timeout))
    return dist.PrefixStore(f"functrain/restart_{restart}/", store)


def shutdown() -> None:
    """Destroy the default process group if `initialize` created it (else do nothing).

    Example:
        >>> shutdown()   # no group: nothing to do
    """
    global _STARTED_HERE
    if _STARTED_HERE and _initialized():
        _dist().destroy_process_group()
    _STARTED_HERE = False


def rank() -> int:
    """This process's rank in the default group; 0 when no group is initialised.

    Example:
        >>> rank()
        0
    """
    return _dist().get_rank() if _initialized() else 0


def world_size() -> int:
    """The number of ranks in the default group; 1 when no group is initialised.

    Example:
        >>> world_size()
        1
    """
    return _dist().get_world_size() if _initialized() else 1


def local_rank() -> int:
    """This process's rank on its node (``LOCAL_RANK``); 0 outside torchrun.

    Example:
        >>> local_rank()
        0
    """
    env = environment()
    return env.local_rank if env is not None and _initialized() else 0


def is_main() -> bool:
    """True on rank 0 (and in a single process): the rank that logs, prints and reports.

    Example:
        >>> is_main()
        True
    """
    return rank() == 0


def device() -> torch.device:
    """This rank's device: ``cuda:LOCAL_RANK`` when CUDA is available, else the CPU.

    Example:
        >>> device().type in ("cpu", "cuda")
        True
    """
    if torch.cuda.is_available():
        return torch.device("cuda", local_rank() % torch.cuda.device_count())
    return torch.device("cpu")
