"""The XLA backend's contact with torch_xla: import checks, devices, syncs, compile counts.

torch_xla is imported here, lazily, when a runner is asked for ``device="xla"`` (or
``"tpu"``); importing functrain never imports it. Everything else in functrain treats an XLA
device like any other ``torch.device``.

How a step runs on XLA (see `functrain.CompiledStep`): ``compile="auto"`` traces the whole step
once with Dynamo and hands the graph to torch_xla's ``openxla`` backend, which compiles it to one
XLA executable and replays it every step. ``compile="eager"`` runs the step in torch_xla's lazy
tensor mode instead: every step re-records the same operations and torch_xla looks the graph up
in its cache by hash at the sync. torch_xla's own whole-step wrapper, ``torch_xla.compile``,
works the same way (lazy tracing of the function, a sync at its end). openxla is the default
because it is the fastest of the three on XLA's CPU device, and after warm-up it compiles
nothing more; lazy mode pays the Python and graph-recording cost of the whole step every step
and now and then compiles a variant of its graph (see `sync`). The measured figures are in
``benchmarks/README.md`` (``benchmarks/xla_step.py``).
"""

from __future__ import annotations

import gc
import os
import re
from importlib import metadata
from typing import Any

import torch

from ._compat import is_autograd_device_queue_error

__all__ = ["compile_count", "data_mesh", "device", "shard_batch", "sync", "wait"]

#: The torch / torch_xla pair functrain's XLA tests run with.
TESTED = "2.9.0"


def _release(version: str) -> tuple[int, ...]:
    """``"2.9.0+cu128"`` -> ``(2, 9)``: the part torch_xla must share with torch."""
    head = version.split("+")[0]
    return tuple(int(p) for p in head.split(".")[:2] if p.isdigit())


def _install_hint() -> str:
    torch_version = torch.__version__.split("+")[0]
    return (f"HINT: torch_xla must be built for the installed torch ({torch_version}): "
            f"`pip install torch_xla=={torch_version}` if that release exists, or install the "
            f"pair functrain is tested with, in a virtual environment of its own: "
            f"`pip install torch=={TESTED} torch_xla=={TESTED}` (see the README, 'Run on TPU').")


def require(argument: str) -> Any:
    """Import torch_xla, or raise an error that says what to install.

    The versions are compared before the import: a torch_xla built for another torch fails to
    load its C++ extension, or worse, loads it and crashes later.
    """
    try:
        xla_version = metadata.version("torch_xla")
    except metadata.PackageNotFoundError:
        raise ImportError(f"{argument} needs torch_xla, which is not installed. "
                          f"{_install_hint()}") from None
    if _release(xla_version) != _release(torch.__version__):
        raise ImportError(f"{argument}: torch_xla {xla_version} does not match torch "
                          f"{torch.__version__} (their major.minor releases must be equal). "
                          f"{_install_hint()}")
    try:
        import torch_xla
    except ImportError as e:
        raise ImportError(f"{argument}: torch_xla {xla_version} is installed but failed to "
                          f"import: {e}. {_install_hint()}") from e
    return torch_xla


def device(name: str, devices: int | str | None = None) -> torch.device:
    """The XLA device for ``name``: ``"xla"``, ``"xla:N"`` or ``"tpu"`` (``PJRT_DEVICE=TPU``).

    With ``devices`` (``"all"`` or the device count), torch_xla's SPMD mode is switched on
    first, for the whole process: all devices then appear as one virtual device, ``xla:0``,
    over which tensors are sharded (see `data_mesh`).
    """
    argument = f"device={name!r}"
    match = re.fullmatch(r"(xla|tpu)(?::(\d+))?", name)
    if match is None or (match[1] == "tpu" and match[2] is not None):
        raise ValueError(f"{argument}: expected 'xla', 'xla:N' or 'tpu'.")
    index = int(match[2] or 0)
    pjrt = os.environ.get("PJRT_DEVICE")
    if name == "tpu" and pjrt is not None and pjrt.upper() != "TPU":
        raise ValueError(f"{argument} expects PJRT_DEVICE=TPU, but PJRT_DEVICE={pjrt!r}. "
                         "HINT: unset PJRT_DEVICE, or use device='xla' to run on the "
                         "device PJRT_DEVICE names.")
    torch_xla = require(argument)
    import torch_xla.runtime as xr

    if name == "tpu" and pjrt is None:  # read when torch_xla's runtime starts, just below
        os.environ["PJRT_DEVICE"] = "TPU"
    if devices is not None and not xr.is_spmd():
        _device_count(devices)  # checked before switching the process to SPMD
        xr.use_spmd()
    if xr.is_spmd() and index != 0:
        raise ValueError(f"{argument}: in SPMD mode (devices=...) torch_xla shows all devices "
                         "as one, xla:0. HINT: use device='xla'.")
    kind = xr.device_type()
    if name == "tpu" and kind != "TPU":
        raise RuntimeError(f"{argument}: torch_xla found no TPU (its runtime runs on "
                           f"{kind}). HINT: run on a TPU VM, or use device='xla' with "
                           "PJRT_DEVICE=CPU to run the same code on XLA's CPU device.")
    count = xr.addressable_runtime_device_count()
    if not 0 <= index < count:
        raise ValueError(f"{argument}: this process has {count} XLA device(s) "
                         f"(xla:0 .. xla:{count - 1}).")
    dev = torch.device(torch_xla.device(index))
    _check_autograd(dev, argument)
    return dev


def _check_autograd(dev: torch.device, argument: str) -> None:
    """Fail early, and clearly, if autograd cannot run on ``dev`` in this process.

    PyTorch's autograd engine sizes its per-device queues once, at the process's first
    backward pass. If that ran before torch_xla's runtime had started, the engine knows no XLA
    device and every XLA backward fails with an internal assertion (torch 2.9).
    """
    x = torch.zeros((), device=dev, requires_grad=True)
    try:  # builds a lazy graph and drops it: nothing is compiled or run
        torch.autograd.grad(x * 2.0, x)
    except RuntimeError as e:
        if not is_autograd_device_queue_error(e):
            raise
        raise RuntimeError(
            f"{argument}: PyTorch's autograd engine started (with a backward pass on another "
            "device) before torch_xla's runtime, so it cannot differentiate on XLA in this "
            "process. HINT: create the XLA device first: call `torch_xla.device()` (or "
            "`functrain.compile_step(..., device='xla')`) before any backward pass, e.g. at "
            "the top of the script; or run the XLA work in its own process.") from None


def sync(collect: bool = False) -> None:
    """Cut the lazy graph and start running it (``torch_xla.sync``); does not wait.

    ``collect``: first free the young cyclic garbage (``gc.collect(1)``), for lazy mode. There
    every pending tensor still alive at the sync becomes an output of the graph: intermediates
    that a reference cycle keeps alive until the collector happens to run give a graph with
    extra outputs, which torch_xla compiles anew. Measured over 1000 lazy steps of a small MLP
    (2-core CPU, torch_xla 2.9.0): without it, 0-2 such compiles at random steps (seen at
    steps 91, 118, 213, 260, 900, 930, 942); with it, none after step 31 in four runs, at no
    measurable cost (4.3-5.3 ms per step either way). It lowers the rate, but does not remove
    them: ``benchmarks/xla_step.py`` still saw 2-3 in 1000 lazy steps. ``gc.collect(0)`` did
    not help; a full ``gc.collect()`` did, at ~260 ms per step in that benchmark.
    """
    import torch_xla

    if collect:
        gc.collect(1)
    torch_xla.sync()


def wait() -> None:
    """Block until every queued XLA computation has finished (for timing)."""
    import torch_xla.core.xla_model as xm

    xm.wait_device_ops()


def compile_count() -> int:
    """How many XLA executables torch_xla has compiled in this process (its
    ``UncachedCompile`` counter, which equals the count of its ``CompileTime`` metric): flat
    after warm-up when nothing recompiles. Read every step by the runner: ~0.5 us (the metric's
    sample list made ``metric_data`` cost ~5 us)."""
    import torch_xla.debug.metrics as met

    return met.counter_value("UncachedCompile") or 0


def data_mesh(devices: int | str) -> Any:
    """A 1-D SPMD mesh, axis ``"data"``, over every device of this process (``devices`` is
    ``"all"`` or their number: torch_xla's meshes span all devices)."""
    import numpy as np
    import torch_xla.distributed.spmd as xs

    count = _device_count(devices)
    return xs.Mesh(np.arange(count), (count,), ("data",))


def _device_count(devices: int | str) -> int:
    """The number of devices ``devices`` stands for; refuses what one SPMD mesh cannot span."""
    import torch_xla.runtime as xr

    if xr.process_count() > 1:
        raise NotImplementedError(
            f"devices={devices!r}: {xr.process_count()} processes share torch_xla's devices "
            "(a multi-host run); functrain's data parallelism covers one host. HINT: run on "
            "one host, or shard the batch yourself with torch_xla.distributed.spmd.")
    count = xr.global_runtime_device_count()
    if devices != "all" and devices != count:
        raise ValueError(
            f"devices={devices!r}: torch_xla sees {count} device(s) and an SPMD mesh must span "
            f"all of them. HINT: pass devices='all' (or {count}); to change the count, set "
            "CPU_NUM_DEVICES (XLA's CPU device) or choose the TPU slice before starting.")
    return count


def shard_batch(x: torch.Tensor, mesh: Any) -> torch.Tensor:
    """Split ``x``'s first dimension over the mesh's ``"data"`` axis (0-d tensors stay whole)."""
    if x.dim() == 0:
        return x
    import torch_xla.distributed.spmd as xs

    xs.mark_sharding(x, mesh, ("data",) + (None,) * (x.dim() - 1))
    return x
