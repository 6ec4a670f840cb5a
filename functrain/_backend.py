"""Backend selection: which compiler runs a step on which device, and the compile call."""

from __future__ import annotations

import types
from collections.abc import Callable
from typing import Any

import torch

from . import _compat
from ._remat import INDUCTOR_OPTIONS, traced_in

__all__ = ["BACKENDS", "FUNCTIONAL", "compile_graph", "compile_method", "resolve_backend"]

BACKENDS = ("eager", "inductor", "cudagraphs", "openxla")
# Backends whose step returns its new state and metric window instead of writing them into
# the inputs: eager, and openxla, where XLA's executable makes fresh buffers anyway and input
# mutations would cost an extra lazy graph per step.
FUNCTIONAL = ("eager", "openxla")


def resolve_backend(compile: str | bool, device: torch.device) -> str:
    """The backend for ``compile`` (``"auto"``, a name, True/False) on ``device``.

    Example:
        >>> resolve_backend("auto", torch.device("cpu"))
        'inductor'
    """
    if compile is True or compile == "auto":
        return {"cuda": "cudagraphs", "xla": "openxla"}.get(device.type, "inductor")
    if compile is False:
        return "eager"
    if compile not in BACKENDS:
        raise ValueError(f"compile: expected one of 'auto', {', '.join(map(repr, BACKENDS))}, "
                         f"True or False, got {compile!r}.")
    if (compile == "openxla") != (device.type == "xla") and compile != "eager":
        raise ValueError(f"compile={compile!r} does not run on device={device}. HINT: on an XLA "
                         "device use compile='auto' (= 'openxla') or 'eager' (torch_xla's lazy "
                         "tensors); elsewhere 'auto', 'inductor', 'cudagraphs' or 'eager'.")
    if compile == "cudagraphs" and device.type != "cuda":
        raise ValueError(f"compile='cudagraphs' needs a CUDA device, got device={device}. "
                         "HINT: use compile='inductor' on CPU.")
    return compile


def compile_graph(backend: str, gm: torch.fx.GraphModule, example_inputs: list[Any]) -> Any:
    """Compile one captured graph with ``backend`` (Dynamo's backend callable)."""
    if backend == "openxla":
        return _compat.lookup_backend("openxla")(gm, example_inputs)
    patches = {"triton.cudagraphs": True} if backend == "cudagraphs" else {}
    if traced_in(gm):  # keep remat's recomputation in the backward
        patches.update(INDUCTOR_OPTIONS)
    cpu, collectives = _all_cpu(example_inputs), _collectives(gm)
    if cpu and any(op.startswith("all_reduce") for op in collectives):
        patches.update(CPU_OVERLAP_OPTIONS)
    elif cpu and not collectives and backend == "inductor":
        patches.update(CPU_OPTIONS)
    return _compat.inductor_compile(gm, example_inputs, config_patches=patches)


# For a CPU graph that all-reduces (`pmean` on gloo): Inductor's scheduler, left alone, waits
# on each bucket's all-reduce right after starting it, before the backward's last matmuls
# (its peak-memory pass puts them after the first bucket's wait). This pass starts each
# all-reduce as soon as its bucket is packed and waits only when the update needs it, so the
# first bucket travels while the first layers' gradients are computed, as DDP's hooks do.
# Measured on gloo only (benchmarks/distributed.py); CUDA graphs keep Inductor's defaults.
CPU_OVERLAP_OPTIONS = {"reorder_for_compute_comm_overlap": True,
                       "reorder_for_compute_comm_overlap_passes": ["reorder_compute_for_overlap"]}


# For a CPU graph: Inductor writes the graph's wrapper (the code that calls its kernels) in C++
# and builds it with the kernels into one library per graph, instead of a Python wrapper
# calling one library per kernel. Each g++ run costs ~0.4 s before any code (loading
# Inductor's precompiled header), so the MNIST-1D example's training step, 12 kernel files,
# compiled in 6.9 s instead of 10.4 s with one compile thread (a `compile="auto"` background
# compile has one), and its step ran no slower (1.21 vs 1.22 ms, 1 thread). The char-GPT:
# 47.4 vs 49.3 s (its compile is mostly tracing, not g++). Not for a graph with collectives
# (sharded or data-parallel steps): their overlap schedule (above) and their tests and
# figures (tests/distributed, benchmarks/distributed.py) are the Python wrapper's.
CPU_OPTIONS = {"cpp_wrapper": True}


def _all_cpu(example_inputs: list[Any]) -> bool:
    """Whether every tensor among ``example_inputs`` is on the CPU."""
    return all(x.device.type == "cpu" for x in example_inputs if isinstance(x, torch.Tensor))


def _collectives(gm: torch.fx.GraphModule) -> set[str]:
    """The functional collectives ``gm`` calls (``"all_reduce.default"``, ...)."""
    prefix = "_c10d_functional."
    return {str(n.target)[len(prefix):] for n in gm.graph.nodes
            if n.op == "call_function" and str(n.target).startswith(prefix)}


_COPIES = 0


def own_code(method: Callable[..., Any]) -> types.FunctionType:
    """A copy of ``method`` with its own code object, named ``functrain_step_N``.

    Dynamo caches compiled code per code object, with a small limit per object; each runner
    compiles its own copy of the method's code, so runners never share (or evict) entries.
    The copy's ``__code__.co_name`` finds Dynamo's guard failures for it.
    """
    global _COPIES
    _COPIES += 1
    return _compat.with_own_code(method, f"functrain_step_{_COPIES}")


def compile_method(fn: types.FunctionType, owner: Any,
                   backend: Callable[..., Any]) -> Callable[..., Any]:
    """``owner.fn`` (``fn``: an `own_code` copy of a method) compiled whole
    (``fullgraph=True, dynamic=False``) by ``backend``. The first call imports Dynamo (~1 s
    on a CPU, once per process)."""
    return torch.compile(types.MethodType(fn, owner), backend=backend, fullgraph=True,
                         dynamic=False)
