"""Every private torch API functrain uses, in one place, each behind a small function.

Each function says which public API is missing, so that it can be retired when torch grows one.
Nothing here runs at import: each private name is looked up when its function is called, and a
name a torch release lacks raises `RuntimeError` naming the API and the torch version (or, where
functrain has a fallback, returns the value that selects it). The functions are exercised on the
pinned torch by ``tests/test_compat.py`` and on the XLA lane's torch (2.9) by
``tests/xla/test_xla_compat.py``.

Example:
    >>> import torch
    >>> is_functional_call_key_error(RuntimeError("Missing key(s): 'w'."))
    True
"""

from __future__ import annotations

import contextlib
import importlib
import sys
import types
from collections.abc import Callable, Iterator
from typing import Any

import torch

__all__ = [
    "all_reduce_in_graph",
    "assume_constant_result",
    "aot_compile_available",
    "aot_compile_method",
    "aot_guard_names",
    "aot_load",
    "aot_save",
    "calculate_correct_fan",
    "dcp_metadata_globals",
    "dcp_slice_file",
    "fake_tensor_mode",
    "functorch_transform_active",
    "guard_failure_reason",
    "has_dcp_slice_file",
    "inductor_cache_dir",
    "inductor_compile",
    "is_autograd_device_queue_error",
    "is_functional_call_key_error",
    "lookup_backend",
    "mark_static_address",
    "outside_innermost_grad",
    "private_sampler_name",
    "real_tensors",
    "register_inductor_pointwise",
    "register_pytree_constant",
    "skip_unused_triton_key",
    "source_checksums_match",
    "start_all_reduce",
    "wait_collective",
    "with_own_code",
]


def _private(module: str, name: str) -> Any:
    """``module.name``, looked up now; a clear error if this torch lacks it."""
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as e:
        raise RuntimeError(
            f"functrain uses the private torch API {module}.{name}, which torch "
            f"{torch.__version__} does not have ({type(e).__name__}: {e}). HINT: install the "
            "torch release functrain is tested with (see the README), or report this.") from None


# -- torch.compile ------------------------------------------------------------------------------


def assume_constant_result(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``torch.compiler.assume_constant_result(fn)``, without importing Dynamo when Dynamo is
    not loaded yet.

    torch's decorator imports ``torch._dynamo`` (~1 s, and ~0.3 s more at interpreter exit),
    only to set a marker on ``fn`` that Dynamo reads when it traces a call to ``fn``; applied
    at ``import functrain``, it made every process pay that, eager runs included. So until
    Dynamo is loaded the marker is set here. Missing public API: a decorator that does not
    load the compiler. Relies on the marker's name, ``_dynamo_marked_constant``
    (tests/test_compat.py checks that torch's decorator sets exactly it).
    """
    if "torch._dynamo" in sys.modules:
        return torch.compiler.assume_constant_result(fn)
    fn._dynamo_marked_constant = True  # type: ignore[attr-defined]
    return fn


def with_own_code(fn: Callable[..., Any], name: str) -> types.FunctionType:
    """A copy of the plain function ``fn`` whose code object is new and named ``name``.

    Dynamo caches compiled graphs per code object, with a small limit per object, so two
    runners compiling the same method would share (and evict) each other's entries. Missing
    public API: a per-call ``torch.compile`` cache (or cache key). Relies on Dynamo keying its
    cache by code object, which torch does not document.
    """
    code = fn.__code__.replace(co_name=name)
    return types.FunctionType(code, fn.__globals__, name, fn.__defaults__, fn.__closure__)


def inductor_compile(gm: torch.fx.GraphModule, example_inputs: list[Any],
                     config_patches: dict[str, Any] | None = None) -> Any:
    """Compile an FX graph with Inductor, as ``torch.compile(backend="inductor")`` would.

    Missing public API: a callable Inductor backend with per-call config, for a custom backend
    (functrain's counts compiles) to delegate to. Uses ``torch._inductor.compile_fx.compile_fx``.
    """
    compile_fx = _private("torch._inductor.compile_fx", "compile_fx")
    return compile_fx(gm, example_inputs, config_patches=config_patches or {})


def inductor_cache_dir() -> str:
    """Inductor's cache directory: ``TORCHINDUCTOR_CACHE_DIR``, else its default
    ``<temp dir>/torchinductor_<user>``, as ``torch._inductor.runtime.cache_dir_utils.cache_dir``
    computes it (outside Meta's fbcode), but found without importing ``torch._inductor``, which
    imports Dynamo (~0.9 s): a cold start asks before it compiles anything. Public API
    missing: the cache directory's location."""
    import getpass
    import os
    import re
    import tempfile

    folder = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    if folder is None:
        try:
            user = getpass.getuser()
        except (KeyError, ModuleNotFoundError, OSError):
            user = f"uid_{os.getuid()}" if hasattr(os, "getuid") else "unknown_user"
        folder = os.path.join(tempfile.gettempdir(),
                              "torchinductor_" + re.sub(r'[\\/:*?"<>|]', "_", user))
    return os.path.abspath(folder)


def compile_in_process() -> None:
    """Make Inductor compile in this process, without its pool of compile workers (a forked
    child must not use the pool its parent started). Uses ``torch._inductor.config``'s
    ``compile_threads``."""
    import torch._inductor.config as inductor_config

    inductor_config.compile_threads = 1


def _identity(x: Any) -> Any:
    return x


def aot_compile_available() -> bool:
    """Whether this torch can save a ``torch.compile`` result across processes (the
    ``aot_compile`` method `aot_compile_method` uses: torch 2.14 has it, 2.9 does not).
    Checked on an uncalled ``torch.compile`` wrapper, so nothing is traced."""
    if _AOT_AVAILABLE:
        return _AOT_AVAILABLE[0]
    _AOT_AVAILABLE.append(hasattr(torch.compile(_identity), "aot_compile"))
    return _AOT_AVAILABLE[0]


_AOT_AVAILABLE: list[bool] = []


def aot_compile_method(fn: types.FunctionType, owner: Any, args: tuple[Any, ...],
                       backend: Callable[..., Any],
                       guard_filter: Callable[[list[Any]], list[bool]]) -> Any:
    """Trace and compile ``fn(owner, *args)`` whole, as ``torch.compile(fullgraph=True,
    dynamic=False)`` would, into a serializable artifact: ``(compiled, data)``.

    ``compiled(owner, *args)`` runs it (checking its guards); ``data`` is what `aot_load`
    takes in another process. ``guard_filter`` chooses the guards kept in the artifact
    (Dynamo's ``guard_filter_fn``; it must drop those that cannot be serialized). Missing
    public API: a documented way to save a ``torch.compile`` result with its guards across
    processes (``torch.compile(...).aot_compile`` is there but unexported and experimental).
    Uses ``aot_compile`` and ``torch._dynamo.aot_compile.AOTCompiledFunction``.
    """
    compiled = torch.compile(types.MethodType(fn, owner), backend=backend, fullgraph=True,
                             dynamic=False, options={"guard_filter_fn": guard_filter})
    return compiled.aot_compile((args, {}))


def aot_save(compiled: Any) -> bytes:
    """`aot_compile_method`'s result as bytes (raises where something in it cannot be
    pickled, e.g. a class defined in a module that cannot be imported again)."""
    cls = _private("torch._dynamo.aot_compile", "AOTCompiledFunction")
    return cls.serialize(compiled).serialized_data


def aot_load(data: bytes, f_globals: dict[str, Any]) -> Any:
    """The compiled function `aot_compile_method` serialized as ``data`` (``f_globals``: the
    traced function's module globals). Its ``.fn`` runs it without a guard check, its
    ``._artifacts.guard_manager.check(f_locals)`` checks the guards. Missing public API: see
    `aot_compile_method`."""
    cls = _private("torch._dynamo.aot_compile", "AOTCompiledFunction")
    return cls.deserialize(data, f_globals=f_globals)


def aot_guard_names() -> tuple[tuple[str, ...], dict[str, Any]]:
    """``(guard types an artifact cannot keep, Dynamo's guard-expression helpers)``: the first
    to decide what `aot_compile_method` must drop, the second to evaluate a guard's source name
    again. Missing public API: Dynamo's guard serialization limits are internal."""
    manager = _private("torch._dynamo.guards", "CheckFunctionManager")
    helpers = _private("torch._dynamo.guards", "_get_closure_vars")()
    return tuple(manager.UNSUPPORTED_SERIALIZATION_GUARD_TYPES), dict(helpers)


def source_checksums_match(artifact: Any) -> bool:
    """Whether every function the artifact's trace inlined still has the source it was traced
    from (Dynamo records each one's module, lines and checksum). Missing public API: the check
    ``torch._dynamo.package.CompilePackage`` runs on load, as a function."""
    import inspect

    hash_source = _private("torch._dynamo.package", "_hash_source")
    lines: dict[str, list[str]] = {}
    try:
        for code in artifact.source_info().inlined_sources:
            if code.module not in lines:
                lines[code.module] = inspect.getsourcelines(
                    importlib.import_module(code.module))[0]
            source = "".join(lines[code.module][code.firstlineno - 1:code.lastlineno - 1])
            if hash_source(source) != code.checksum:
                return False
    except Exception:  # a module gone, a file unreadable: not the traced code
        return False
    return True


def skip_unused_triton_key() -> None:
    """On a machine without CUDA, spare Inductor hashing the Triton install (~0.4-3 s per
    process: ``libtriton.so`` is ~500 MB) for a cache key that drops it.

    Inductor's ``CacheBase.get_system`` puts ``triton_key()`` into the key only with a CUDA
    (or ROCm) device; without one it hashes ``{}`` and the Triton hash computed first is thrown
    away. Setting the memoized value to ``None`` there leaves every key as it was. Missing
    public API: a lazily computed system key. Uses ``torch._inductor.codecache.triton_key``'s
    ``set``.
    """
    if torch.cuda.is_available():
        return
    try:
        key = _private("torch._inductor.codecache", "triton_key")
        key.set(None)
    except (RuntimeError, AttributeError):  # already computed (or set), or no such hook
        pass


def register_inductor_pointwise(op: Any, dtype: torch.dtype | Callable[..., torch.dtype],
                                element: Callable[..., Any]) -> bool:
    """Lower the custom operator ``op(key, n, *args)`` in Inductor to one fusable elementwise node.

    The node has shape ``(n,)`` and ``dtype`` (or ``dtype(n, *args)``); its element is
    ``element(ops, k0, k1, index, n, *args)``, where ``ops`` is Inductor's op namespace
    (``ops.add``, ``ops.bitwise_xor``, ...), ``k0, k1`` the two words of the int64 tensor
    ``key`` (shape ``(2,)``) and ``index(dtype)`` the element's index as an integer value of
    that dtype. Inductor then fuses the node with its consumers, as it does its own pointwise
    ops. Used by `functrain.random` so that the Threefry hash of a dropout mask runs inside the
    mask's kernel. Missing public API: a custom operator
    cannot tell Inductor how to generate (and fuse) its code on the CPU;
    ``torch.library.triton_op`` covers Triton kernels only, and opaquely. Uses
    ``torch._inductor.lowering.register_lowering``, ``torch._inductor.ir.Pointwise``,
    ``torch._inductor.virtualized.ops`` and the input's ``make_loader``. Returns False,
    registering nothing, where this torch lacks them (the operator then runs its eager kernels:
    the same values, unfused).
    """
    try:
        register_lowering = _private("torch._inductor.lowering", "register_lowering")
        pointwise = _private("torch._inductor.ir", "Pointwise")
        ops = _private("torch._inductor.virtualized", "ops")
        sympy = importlib.import_module("sympy")
    except (RuntimeError, ImportError):
        return False

    def lower(key: Any, n: Any, *args: Any) -> Any:
        load = key.make_loader()

        def inner_fn(index: Any) -> Any:
            k0, k1 = load([sympy.Integer(0)]), load([sympy.Integer(1)])
            return element(ops, k0, k1, lambda dt: ops.index_expr(index[0], dt), n, *args)

        out = dtype(n, *args) if callable(dtype) else dtype
        return pointwise.create(device=key.get_device(), dtype=out, inner_fn=inner_fn,
                                ranges=[n])

    register_lowering(op, type_promotion_kind=None)(lower)
    return True


def lookup_backend(name: str) -> Callable[..., Any]:
    """The torch.compile backend registered as ``name`` (e.g. torch_xla's ``"openxla"``).

    Missing public API: a lookup of registered backends by name (``torch.compiler`` lists
    their names only). Uses ``torch._dynamo.lookup_backend``.
    """
    return _private("torch._dynamo", "lookup_backend")(name)


def mark_static_address(x: torch.Tensor) -> None:
    """Tell Dynamo that ``x`` keeps its address across calls (for CUDA graphs).

    Missing public API: ``torch.compiler`` has no static-address marker. Uses
    ``torch._dynamo.mark_static_address``.
    """
    _private("torch._dynamo", "mark_static_address")(x)


def guard_failure_reason(code_name: str) -> str | None:
    """The last reason Dynamo gave for recompiling the code object named ``code_name``.

    Best effort: ``None`` if there is none or this torch records them elsewhere. Missing public
    API: recompile reasons are only logged (``TORCH_LOGS=recompiles``), not returned. Uses
    ``torch._dynamo.utils.guard_failures``.
    """
    try:
        failures = _private("torch._dynamo.utils", "guard_failures")
        for code, reasons in failures.items():
            if getattr(code, "co_name", None) == code_name and reasons:
                return str(reasons[-1])
    except Exception:
        return None
    return None


def is_recompile_limit_error(e: BaseException) -> bool:
    """Whether ``e`` is Dynamo's failure at its recompile limit (``FailOnRecompileLimitHit``).

    Missing public API: the exception class lives in ``torch._dynamo.exc``.
    """
    try:
        return isinstance(e, _private("torch._dynamo.exc", "FailOnRecompileLimitHit"))
    except Exception:
        return False


def recompile_limit() -> int | None:
    """Dynamo's recompile limit per code object (``torch._dynamo.config.recompile_limit``)."""
    try:
        return int(_private("torch._dynamo.config", "recompile_limit"))
    except Exception:
        return None


def fake_tensor_mode() -> Any:
    """A fake-tensor mode in which real tensors are allowed too (for a shape-only dry run).

    Missing public API: fake tensors (``torch._subclasses.fake_tensor.FakeTensorMode``).
    """
    return _private("torch._subclasses.fake_tensor", "FakeTensorMode")(
        allow_non_fake_inputs=True)


@contextlib.contextmanager
def real_tensors() -> Iterator[None]:
    """Leave any active fake-tensor mode for the block (new tensors are real ``meta`` ones).

    Missing public API: a way to step out of fake-tensor mode
    (``torch._subclasses.fake_tensor.unset_fake_temporarily``).
    """
    with _private("torch._subclasses.fake_tensor", "unset_fake_temporarily")():
        yield


# -- torch.func / autograd: errors recognised by their text -------------------------------------


def is_functional_call_key_error(e: BaseException) -> bool:
    """Whether ``e`` is ``torch.func.functional_call(strict=True)``'s missing/unexpected-key error.

    Missing public API: that error is a plain `RuntimeError`; its text is the only signal.
    """
    msg = str(e)
    return isinstance(e, RuntimeError) and ("Missing key" in msg or "Unexpected key" in msg)


def is_autograd_device_queue_error(e: BaseException) -> bool:
    """Whether ``e`` is autograd's internal assertion for a device it has no queue for.

    The engine sizes its per-device queues at the process's first backward pass; a device
    whose runtime started later (torch_xla) fails with this assertion. Missing public API: an
    exception type or a query for it; the text (``device_ready_queues_``) is the only signal.
    """
    return isinstance(e, RuntimeError) and "device_ready_queues_" in str(e)


def functorch_transform_active() -> bool:
    """Whether a ``torch.func`` transform (``grad``, ``vjp``, ``jvp``, ``vmap``,
    ``functionalize``) is running around the caller. Missing public API: ``torch.func`` has no
    query for its interpreter stack. Uses ``torch._C._functorch.peek_interpreter_stack``.
    """
    global _PEEK_INTERPRETER_STACK
    if _PEEK_INTERPRETER_STACK is None:  # looked up at the first use, kept: a per-step check
        _PEEK_INTERPRETER_STACK = _private("torch._C", "_functorch").peek_interpreter_stack
    return _PEEK_INTERPRETER_STACK() is not None


_PEEK_INTERPRETER_STACK: Callable[[], Any] | None = None


def outside_innermost_grad(tensors: tuple[Any, ...]) -> tuple[Any, ...]:
    """``tensors`` as seen outside the innermost ``torch.func`` grad transform, if one runs.

    Inside a backward pass run by ``torch.func.grad``/``vjp`` at level L, autograd records
    (``create_graph=True``) at level L too, so a tensor computed there keeps level L's graph
    alive; the same tensors taken from level L-1 are recorded only by the outer levels (a MAML
    outer ``grad`` still differentiates them), where ``Tensor.detach`` would cut every level.
    Returns ``tensors`` unchanged when the innermost transform is not a grad transform (or
    none runs). Missing public API: ``torch.func`` has no per-level detach. Uses
    ``torch._C._functorch.peek_interpreter_stack``, ``TransformType`` and
    ``_unwrap_for_grad``.
    """
    functorch = _private("torch._C", "_functorch")
    top = functorch.peek_interpreter_stack()
    if top is None or top.key() != functorch.TransformType.Grad:
        return tensors
    level = top.level()
    return tuple(t if t is None else functorch._unwrap_for_grad(t, level) for t in tensors)


# -- random ops torch exposes only privately ----------------------------------------------------

_PRIVATE_SAMPLERS = ("_standard_gamma", "_sample_dirichlet")


def private_sampler_name(func: Any) -> str | None:
    """``"_standard_gamma"`` / ``"_sample_dirichlet"`` if ``func`` is that torch function.

    Gamma, Beta and Dirichlet sampling (``torch.distributions``) draw through these, so a keyed
    scope must recognise them to refuse them. Missing public API: none of them is public; they
    are compared by name at use, so importing functrain touches neither.
    """
    name = getattr(func, "__name__", None)
    if name in _PRIVATE_SAMPLERS and getattr(torch, name, None) is func:
        return name
    return None


def calculate_correct_fan(tensor: torch.Tensor, mode: str) -> int:
    """The fan (``"fan_in"`` or ``"fan_out"``) ``nn.init.kaiming_*`` uses for ``tensor``.

    Missing public API: ``torch.nn.init`` computes it privately
    (``torch.nn.init._calculate_correct_fan``).
    """
    return _private("torch.nn.init", "_calculate_correct_fan")(tensor, mode)


# -- torch.distributed.checkpoint ---------------------------------------------------------------


def has_dcp_slice_file() -> bool:
    """Whether DCP's ``FileSystemReader`` has the private ``_slice_file`` `dcp_slice_file` uses."""
    import torch.distributed.checkpoint as dcp

    return hasattr(dcp.FileSystemReader, "_slice_file")


def dcp_slice_file(reader: Any, file: Any, storage_info: Any) -> Any:
    """A file view of one stored item (``storage_info``: its entry in DCP's metadata).

    Missing public API: DCP reads whole plans only; reading one tensor's bytes as stored (to
    keep the tensor ``torch.load`` returns instead of copying it) needs
    ``FileSystemReader._slice_file``. Check `has_dcp_slice_file` first.
    """
    return reader._slice_file(file, storage_info)


def dcp_metadata_globals() -> set[tuple[str, str]]:
    """The ``(module, name)`` globals a DCP ``.metadata`` pickle may reference.

    Several are private to DCP or torch (``_StorageInfo``, ``_MEM_FORMAT_ENCODING``,
    ``torch.serialization._get_layout``); a restricted unpickler must admit them by name.
    Missing public API: a safe loader for DCP metadata (DCP unpickles it unrestricted).
    """
    md = "torch.distributed.checkpoint.metadata"
    return {
        *((md, n) for n in ("Metadata", "TensorStorageMetadata", "BytesStorageMetadata",
                            "ChunkStorageMetadata", "TensorProperties", "MetadataIndex",
                            "StorageMeta", "_MEM_FORMAT_ENCODING")),
        ("torch.distributed.checkpoint.filesystem", "_StorageInfo"),
        ("torch", "Size"), ("torch.serialization", "_get_layout"),
        *((m, n) for m in ("pathlib", "pathlib._local")
          for n in ("PosixPath", "WindowsPath", "PurePosixPath", "PureWindowsPath")),
    }


# -- torch.distributed --------------------------------------------------------------------------


def all_reduce_in_graph(x: torch.Tensor, op: str, group_name: str) -> torch.Tensor:
    """All-reduce ``x`` (``op``: ``"sum"`` or ``"avg"``) over the group named ``group_name``.

    ``torch.distributed._functional_collectives.all_reduce`` followed by its ``wait_tensor``:
    the functional (out-of-place) collective that Dynamo traces as a node of the compiled
    graph. Missing public API: a traceable functional collective (``dist.all_reduce`` works
    in place and breaks the graph). The import statement (not `_private`) keeps it traceable.
    """
    return wait_collective(start_all_reduce(x, op, group_name))


def start_all_reduce(x: torch.Tensor, op: str, group_name: str) -> torch.Tensor:
    """Start all-reducing ``x`` (as `all_reduce_in_graph`) without waiting: the result may be
    read only after `wait_collective`. Starting every bucket's all-reduce before waiting on the
    first lets the process group work on several at once, as DDP's buckets do. Missing public
    API: see `all_reduce_in_graph`; uses ``_functional_collectives.all_reduce``."""
    from torch.distributed import _functional_collectives as fc

    return fc.all_reduce(x, op, group_name)


def wait_collective(x: torch.Tensor) -> torch.Tensor:
    """The finished result of a collective started by `start_all_reduce` (its
    ``wait_tensor``, a node of the compiled graph). Missing public API: see
    `all_reduce_in_graph`."""
    from torch.distributed import _functional_collectives as fc

    return fc.wait_tensor(x)


# -- torch.utils._pytree ------------------------------------------------------------------------


def register_pytree_constant(cls: type) -> None:
    """Register ``cls`` with torch's pytree as a constant (a node with no leaves).

    Dynamo passes instances of such a class into a ``torch.compiler.nonstrict_trace`` call as
    constants, guarded by ``__eq__`` (`functrain.remat` passes the function it wraps so).
    Missing public API: ``torch.utils._pytree.register_constant`` has no public alias.
    """
    _private("torch.utils._pytree", "register_constant")(cls)
