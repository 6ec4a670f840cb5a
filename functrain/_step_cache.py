"""functrain's step cache: a compiled step that the next process loads instead of tracing.

torch's FX-graph and AOTAutograd caches already spare a warm process Inductor's work, but
Dynamo still traces the step's Python again in every process: seconds for the MNIST-1D CNN,
most of a warm start. On its first call, an inductor-compiled step is traced and compiled as
torch.compile's AOT artifact (the transformed bytecode, its guards, the compiled graph) and
saved under ``<Inductor cache dir>/functrain_steps/`` (``TORCHINDUCTOR_CACHE_DIR`` moves it;
default ``/tmp/torchinductor_<user>``). A later process with the same step loads it.

A stale artifact must never run, so one is used only when all of these hold:

* its key matches: functrain's source (every file of the package), torch's and Python's
  versions, the CPU's vector ISA, Inductor's, AOTAutograd's and Dynamo's configs, the
  runner's settings, the step function's code and closure, and the tree,
  shapes, dtypes, strides and devices of the state, batch and metric window;
* every function the trace inlined (model ``forward``, loss, optimizer, functrain's and
  torch's own) has the source it was traced from (Dynamo's per-function checksums);
* Dynamo's serializable guards pass (checked on every call; a failing call compiles anew);
* the guards an artifact cannot keep (identity, closure and global-value guards) are
  re-evaluated and compared against a fingerprint recorded at save time: values, types and
  dict keys, functions by qualified name and code, modules by name.

In the process that runs it, a cached step keeps answering to those dropped guards
(`DroppedGuards`): the ones on plain values (a hyperparameter in a global, a module's flag, a
default argument) and on the user's functions are checked on every call, and a change is
reported as a recompile, as Dynamo would; the rest (modules, containers, hooks, library
functions) when a run starts, and a change there (which Dynamo, guarding only what the step
read, may not count as one) sends the step to Dynamo's path without a recompile warning.
Either way the runner leaves the cached step for good and Dynamo compiles the step anew.

Set ``FUNCTRAIN_STEP_CACHE=0`` (or pass ``cache=False`` to `functrain.compile_step`) to turn
it off; torch's own caches stay as torch configures them.
"""

from __future__ import annotations

import builtins
import collections
import enum
import functools
import hashlib
import logging
import operator
import os
import pickle
import platform
import re
import sys
import tempfile
import types
from collections.abc import Callable
from typing import Any

import optree
import torch

from . import _compat
from . import tree as _tree

__all__ = ["ENV", "DroppedGuards", "StepCache", "Unsaved", "count", "enabled", "fingerprint",
           "in_process_group"]

ENV = "FUNCTRAIN_STEP_CACHE"
_FORMAT = 1
_MAX_ITEMS = 256
_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")
_UNNAMED = "___unnamed_scope_"  # Dynamo's name for a non-module globals dict, by its id
_BUILTINS_DICT = re.compile(r"__builtins_dict___\d+")
_BUILTINS_ITEM = re.compile(r"G\['__builtins_dict___\d+'\]")
_PLAIN = {"builtin", "type", "module", "str", "int", "float", "bool", "NoneType", "bytes",
          "builtins.dict", "builtins.tuple", "builtins.list"}
# Dropped guards checked on every call (`DroppedGuards.changed_values`): immutable values
# (rebinding them is what changes them) and functions outside these libraries.
_VALUES = {"bool", "int", "float", "complex", "str", "bytes", "NoneType", "torch", "enum"}
_LIBRARIES = ("torch.", "functrain.", "builtins.", "optree.", "collections.", "functools.",
              "typing.", "dataclasses.", "math.", "operator.", "contextlib.", "enum.", "abc.")
# A guard source rooted in a module other than these (Dynamo names an imported module
# ``G['__import_<name, dots as _dot_>']`` in the globals of the traced function, functrain's).
_USER_ROOT = re.compile(r"G\['__import_(?!(?:torch|functrain|optree|builtins|collections|"
                        r"functools|typing|dataclasses|math|operator|contextlib|enum|abc)"
                        r"(?:_dot_|'))")
log = logging.getLogger(__name__)


def enabled() -> bool:
    """Whether the step cache is on: ``FUNCTRAIN_STEP_CACHE`` is not ``0`` and Inductor's
    caches are not force-disabled. (Whether this torch can save a compiled step at all, 2.14
    can and the XLA lane's 2.9 cannot, is checked at the first call: the check initializes
    ``torch.compile``, ~0.7 s, which an eager start under ``compile="auto"`` does without.)
    Read from ``torch.compiler.config``, which Inductor's flag aliases: importing
    ``torch._inductor`` imports Dynamo too (~1.2 s), which such a start does without."""
    if os.environ.get(ENV, "1").strip().lower() in ("0", "false", "off", "no"):
        return False
    import torch.compiler.config

    return not torch.compiler.config.force_disable_caches


def in_process_group() -> bool:
    """Whether a ``torch.distributed`` process group is initialized. The step cache is then
    not used: a traced step folds this rank's rank and world size into its graph (Dynamo
    constant-folds ``dist.get_rank()``), so one rank's artifact would be wrong on another."""
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized()


def directory() -> str:
    """Where artifacts live: ``functrain_steps`` in Inductor's cache dir (found without
    importing Inductor: `functrain._compat.inductor_cache_dir`)."""
    return os.path.join(_compat.inductor_cache_dir(), "functrain_steps")


class Unfingerprintable(Exception):
    """A value the cache cannot identify across processes: the step is not cached."""


def _qualname(x: Any) -> str:
    return f"{getattr(x, '__module__', None)}.{getattr(x, '__qualname__', type(x).__name__)}"


def code_digest(code: types.CodeType) -> str:
    """A hash of a code object's bytecode, constants (nested code recursively) and names."""
    h = hashlib.sha256()
    h.update(code.co_code)
    for c in code.co_consts:
        h.update(code_digest(c).encode() if isinstance(c, types.CodeType) else
                 f"{type(c).__name__}:{c!r}".encode())
    h.update(repr((code.co_names, code.co_varnames, code.co_freevars, code.co_cellvars,
                   code.co_qualname if hasattr(code, "co_qualname") else code.co_name)).encode())
    return h.hexdigest()


def fingerprint(x: Any, depth: int = 0) -> Any:
    """A value that two processes compute equal for "the same" ``x``: constants by value,
    tensors by metadata, functions by qualified name and code, classes and modules by name,
    containers item by item, other objects by type and attribute names.

    Example:
        >>> fingerprint((1, "a", None)) == fingerprint((1, "a", None))
        True
        >>> fingerprint(lambda: 1) == fingerprint(lambda: 2)
        False
    """
    if x is None or isinstance(x, (bool, int, float, complex, str, bytes)):
        return (type(x).__name__, repr(x))
    if isinstance(x, (torch.dtype, torch.device, torch.layout, torch.memory_format)):
        return ("torch", str(x))
    if isinstance(x, enum.Enum):
        return ("enum", _qualname(type(x)), x.name)
    if isinstance(x, types.ModuleType):
        return ("module", x.__name__)
    if isinstance(x, type):
        return ("type", _qualname(x))
    if isinstance(x, types.FunctionType):
        return ("function", _qualname(x), code_digest(x.__code__))
    if isinstance(x, types.MethodType):
        return ("method", fingerprint(x.__func__, depth), _qualname(type(x.__self__)))
    if isinstance(x, (types.BuiltinFunctionType, types.BuiltinMethodType,
                      types.MethodDescriptorType, types.WrapperDescriptorType)):
        return ("builtin", _qualname(x), _ADDRESS.sub("", repr(x)))
    if isinstance(x, torch.Tensor):
        stride = x.stride() if x.layout == torch.strided else None
        return ("tensor", tuple(x.shape), str(x.dtype), str(x.device), stride, x.requires_grad)
    if isinstance(x, (tuple, list, dict, set, frozenset)) and len(x) > _MAX_ITEMS:
        raise Unfingerprintable(f"a {type(x).__name__} of {len(x)} items")
    if depth >= 3:
        return ("deep", _qualname(type(x)))
    if isinstance(x, (tuple, list)):
        return (_qualname(type(x)), tuple(fingerprint(v, depth + 1) for v in x))
    if isinstance(x, dict):
        return (_qualname(type(x)), tuple((fingerprint(k, depth + 1), fingerprint(v, depth + 1))
                                          for k, v in x.items()))
    if isinstance(x, (set, frozenset)):
        return (_qualname(type(x)), tuple(sorted(repr(fingerprint(v, depth + 1)) for v in x)))
    if isinstance(x, functools.partial):
        return ("partial", fingerprint(x.func, depth + 1), fingerprint(x.args, depth + 1))
    attrs = vars(x) if hasattr(x, "__dict__") else {}
    return ("object", _qualname(type(x)), tuple(sorted(map(str, attrs))))


@functools.cache
def functrain_digest() -> str:
    """A hash of every source file of the functrain package (its version, its lowerings)."""
    root = os.path.dirname(os.path.abspath(__file__))
    h = hashlib.sha256()
    for folder, dirs, files in os.walk(root):
        dirs.sort()
        for name in sorted(files):
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                h.update(os.path.relpath(path, root).encode())
                with open(path, "rb") as f:
                    h.update(f.read())
    return h.hexdigest()


def _configs() -> str:
    """The compiler settings a saved step was built under: Inductor's, AOTAutograd's and
    Dynamo's configs (as Inductor's own cache key takes them), and global numerics flags."""
    from torch._dynamo import config as dynamo
    from torch._functorch import config as functorch
    from torch._inductor import config as inductor

    def canonical(v: Any) -> Any:  # sets in a fixed order (string hashing is per process)
        if isinstance(v, (set, frozenset)):
            return sorted(repr(canonical(x)) for x in v)
        if isinstance(v, dict):
            return sorted((repr(k), canonical(x)) for k, x in v.items())
        if isinstance(v, (list, tuple)):
            return [canonical(x) for x in v]
        return v

    parts: list[Any] = [canonical(c.save_config_portable())
                        for c in (inductor, functorch, dynamo)]
    parts.append((torch.are_deterministic_algorithms_enabled(), str(torch.get_default_dtype()),
                  torch.get_float32_matmul_precision()))
    return hashlib.sha256(_ADDRESS.sub("", repr(parts)).encode()).hexdigest()


def _step_digest(step_fn: Callable[..., Any]) -> Any:
    """The user's step: its code, and what its closure and defaults hold."""
    fn = getattr(step_fn, "__func__", step_fn)
    parts: list[Any] = [fingerprint(fn)]
    for cell in getattr(fn, "__closure__", None) or ():
        try:
            value = cell.cell_contents
        except ValueError:  # an empty cell
            value = None
        parts.append(_module_digest(value) if isinstance(value, torch.nn.Module)
                     else fingerprint(value))
    parts.append(fingerprint(getattr(fn, "__defaults__", None)))
    return parts


def _module_digest(module: torch.nn.Module) -> Any:
    """A module by its submodules' types and its parameters' and buffers' names and shapes."""
    return (("modules",) + tuple((n, _qualname(type(m))) for n, m in module.named_modules()) +
            tuple((n, fingerprint(t)) for n, t in module.state_dict(keep_vars=True).items()))


def _structure(args: Any) -> str:
    spec = optree.tree_structure(args, namespace=_tree.NAMESPACE,
                                 is_leaf=lambda x: isinstance(x, torch.Tensor))
    return _ADDRESS.sub("", str(spec))


class Unsaved(dict):
    """A dict that pickles as an empty one.

    Dynamo pickles the runner (the step method's ``self``) into an artifact's guard state; the
    runner's compiled functions and loaded steps (C++ guard managers) cannot be pickled and
    are not needed there.
    """

    def __reduce__(self) -> tuple[Any, ...]:
        return (Unsaved, ())


class DroppedGuards:
    """The guards a compiled step's artifact could not keep, checked in this process.

    Dynamo checks every guard of a compiled frame on every call; an artifact keeps only the
    serializable ones (`Loaded.check`). The rest, ``[(guard source, fingerprint)]``, are
    what the trace read as constants from globals, closures and objects. ``changed_values``
    (every call) evaluates the ones on plain values and on the user's functions, all in one
    compiled expression, and compares the objects by identity with those last found equal
    to their fingerprints (a rebound global is a new object; only a new one is fingerprinted
    again); ``changed`` (a new run) re-evaluates all of them.

    Args:
        dropped: the ``(guard source, fingerprint)`` pairs recorded when the step was traced.
        f_globals: the globals the guard sources name as ``G`` (the artifact function's).
    """

    def __init__(self, dropped: list[tuple[str, Any]], f_globals: dict[str, Any]) -> None:
        self.dropped = dropped
        self.f_globals = f_globals
        _, helpers = _compat.aot_guard_names()
        # G is the live globals dict (a global rebound later is seen); Dynamo's names for the
        # builtins' dict become one name of their own.
        self._scope = {**helpers, "G": f_globals, "___functrain_builtins": builtins.__dict__,
                       "__builtins__": builtins}
        for name, _ in dropped:  # the bare alias too, should a source name it so
            self._scope.update(dict.fromkeys(_BUILTINS_DICT.findall(name), builtins.__dict__))
        sources = [_BUILTINS_ITEM.sub("___functrain_builtins", name) for name, _ in dropped]
        self._codes = [compile(src, "<functrain dropped guard>", "eval") for src in sources]
        picked = [i for i, (name, fp) in enumerate(dropped) if _per_call(name, fp)]
        self._names = [dropped[i][0] for i in picked]
        self._expected = [dropped[i][1] for i in picked]
        self._code = (compile("(" + "".join(sources[i] + "," for i in picked) + ")",
                              "<functrain dropped guards>", "eval") if picked else None)
        self._seen: tuple[Any, ...] | None = None  # objects found equal to their fingerprints

    def changed_values(self, f_locals: dict[str, Any]) -> str | None:
        """The first per-call guard whose value changed (its source and why), or ``None``."""
        if self._code is None:
            return None
        try:
            values = eval(self._code, self._scope, {**f_locals, "L": f_locals})  # noqa: S307
        except Exception as e:  # a global deleted, an attribute gone: Dynamo would retrace
            return f"a value the step read is gone ({type(e).__name__}: {e})"
        seen = self._seen
        if seen is not None and all(map(operator.is_, values, seen)):
            return None
        for i, (value, expected) in enumerate(zip(values, self._expected)):
            if seen is not None and value is seen[i]:
                continue
            try:
                now = fingerprint(value)
            except Unfingerprintable as e:
                return f"{self._names[i]} changed ({e})"
            if now != expected:
                return f"{self._names[i]} changed ({_shown(expected)} -> {_shown(now)})"
        self._seen = values
        return None

    def changed(self, f_locals: dict[str, Any]) -> str | None:
        """The first dropped guard (any kind) whose fingerprint changed, or ``None``."""
        return self.changed_values(f_locals) or self.changed_structure(f_locals)

    def changed_structure(self, f_locals: dict[str, Any]) -> str | None:
        """The first dropped guard whose fingerprint changed, all of them re-evaluated (~5 ms
        for a small model's step). Stricter than Dynamo: a fingerprint holds a whole global
        dict's items and an object's attribute names, where Dynamo guards only what the
        step read, so a change here need not be one Dynamo would recompile for."""
        # Names resolve as Dynamo's guard sources expect: the step's arguments, then the
        # helpers, G and L, then the globals themselves (live).
        scope = collections.ChainMap({"L": f_locals}, f_locals, self._scope, self.f_globals)
        for (name, expected), code in zip(self.dropped, self._codes):
            try:
                now = fingerprint(eval(code, self._scope, scope))  # noqa: S307
            except Exception as e:  # gone, or grown past what a fingerprint holds
                return f"{name}: {type(e).__name__}: {e}"
            if now != expected:
                return f"{name} changed"
        return None

    def hand_over(self, f_locals: dict[str, Any]) -> str | None:
        """`changed_structure` for a runner at a new run: a change is logged and counted
        (``step_cache_handover``) as the cached step is left for Dynamo's path."""
        reason = self.changed_structure(f_locals)
        if reason is not None:
            log.info("functrain: the cached step left for Dynamo's (%s)", reason)
            count("step_cache_handover")
        return reason


def _per_call(name: str, fp: Any) -> bool:
    """Whether a dropped guard is checked on every call: one reached from a user's module
    (not from torch's, functrain's or the standard library's) on a plain value, or on a
    function outside the libraries (`_LIBRARIES`)."""
    if not (_USER_ROOT.match(name) and isinstance(fp, tuple) and fp and isinstance(fp[0], str)):
        return False
    if fp[0] == "function":
        return not str(fp[1]).startswith(_LIBRARIES)
    return fp[0] in _VALUES


def _shown(fp: Any) -> str:
    """A fingerprint as the user wrote the value: ``float 1.0``, ``function m.f``."""
    if isinstance(fp, tuple) and len(fp) >= 2 and isinstance(fp[0], str):
        return f"{fp[0]} {fp[1]}"
    return repr(fp)


class Loaded:
    """A compiled step from the cache (or just compiled and saved).

    Attributes:
        fn: runs the step, ``fn(owner, *args)``, with no guard check.
        check: ``check(f_locals)`` -> bool, Dynamo's serializable guards (C++).
        names: the step method's parameter names (``f_locals`` keys for ``check``).
        hit: loaded from disk (``False``: compiled in this process).
        dropped: the guards the artifact could not keep (`DroppedGuards`).
    """

    def __init__(self, aot: Any, hit: bool, dropped: list[tuple[str, Any]]) -> None:
        self.fn = aot.fn
        self.check = aot._artifacts.guard_manager.check
        self.names = tuple(aot._artifacts.signature.parameters)
        self.hit = hit
        self.dropped = DroppedGuards(dropped, aot.fn.__globals__)


class StepCache:
    """Save and load one runner's compiled step methods.

    Args:
        step_fn: the user's step (its code and closure enter the key).
        settings: the runner's settings that shape the graph (backend, donation, precision...).
    """

    def __init__(self, step_fn: Callable[..., Any], settings: tuple[Any, ...]) -> None:
        self.step_fn = step_fn
        self.settings = settings

    def key(self, method: str, args: tuple[Any, ...]) -> str | None:
        """The artifact's key for calling ``method`` on ``args``, or None (not cacheable)."""
        return self._hash(method, args, with_configs=True)

    def prekey(self, method: str, args: tuple[Any, ...]) -> str | None:
        """`key` without the compiler's configs, so computed without importing the compiler
        (Dynamo and Inductor: ~1 s), on the arguments before the runner checks them: a cold
        start asks `keyed` whether any process computed the full key for it, and where
        none did, nothing can be saved for it and the start skips that cost."""
        return self._hash(method, args, with_configs=False)

    def keyed(self, prekey: str) -> bool:
        """Whether `mark_keyed` marked ``prekey``."""
        return os.path.exists(os.path.join(directory(), prekey + ".keyed"))

    def mark_keyed(self, prekey: str) -> None:
        """Remember that a process computed the full `key` of the step ``prekey`` names."""
        folder = directory()
        try:
            os.makedirs(folder, exist_ok=True)
            with open(os.path.join(folder, prekey + ".keyed"), "a"):
                pass
        except OSError as e:  # the next start asks again, nothing else
            log.warning("functrain step cache: cannot write to %s (%s).", folder, e)

    def _hash(self, method: str, args: tuple[Any, ...], with_configs: bool) -> str | None:
        try:
            leaves = _tree.leaves(args)
            parts = (_FORMAT, functrain_digest(), torch.__version__, sys.version,
                     platform.machine(), torch.backends.cpu.get_cpu_capability(),
                     _configs() if with_configs else "prekey", method, repr(self.settings),
                     repr(_step_digest(self.step_fn)), _structure(args),
                     repr([fingerprint(x) for x in leaves]))
        except Unfingerprintable as e:
            log.info("functrain step cache: not cacheable (%s)", e)
            return None
        return hashlib.sha256(repr(parts).encode()).hexdigest()

    def first_call(self, owner: Any, method: Callable[..., Any],
                   args: tuple[Any, ...]) -> Loaded | None:
        """The compiled step for ``owner.method(*args)``: loaded (counted in the runner's
        ``compiles`` and ``cache_hits``), or traced, compiled and saved; ``None``: compile
        it the usual way (it cannot be saved, or this torch cannot save a compiled step)."""
        if not _compat.aot_compile_available():
            return None
        _compat.skip_unused_triton_key()
        key = self.key(method.__name__, args)
        loaded = None if key is None else self.load(key, owner, args, method.__globals__)
        if loaded is not None:
            owner.compiles += 1
            owner.cache_hits += 1
            return loaded
        if key is not None and self.unsaveable(key):  # failed before: don't trace twice
            return None
        fn = _compat.with_own_code(method, f"{method.__name__}_aot")
        before = owner.compiles
        try:
            return self.compile(key, fn, owner, args,
                                lambda gm, inputs: owner._compile_graph(gm, inputs))
        except Exception as e:  # something cannot be pickled: compile as usual
            log.info("functrain step cache: not cached (%s: %s)", type(e).__name__, e)
            self.mark_unsaveable(key)
            owner.compiles = before  # Dynamo's compile after this is the one that counts
            return None

    def load(self, key: str, owner: Any, args: tuple[Any, ...],
             f_globals: dict[str, Any]) -> Loaded | None:
        """The artifact saved under ``key`` if it exists and every check passes."""
        path = os.path.join(directory(), key)
        try:
            with open(path, "rb") as f:
                saved = pickle.load(f)
        except FileNotFoundError:
            return None
        except Exception as e:  # a truncated or foreign file: compile anew
            log.warning("functrain step cache: cannot read %s (%s); compiling.", path, e)
            return None
        if saved.get("format") != _FORMAT or saved.get("key") != key:
            return None
        if saved.get("needs_random_ops"):
            from .random._threefry import register_ops

            register_ops()
        try:
            aot = _compat.aot_load(saved["data"], f_globals)
        except Exception as e:
            log.warning("functrain step cache: cannot load %s (%s); compiling.", path, e)
            return None
        loaded = Loaded(aot, hit=True, dropped=saved["dropped"])
        f_locals = dict(zip(loaded.names, (owner, *args)))
        stale = ("a traced function's source changed" if not _compat.source_checksums_match(aot)
                 else "a guard fails" if not loaded.check(f_locals)
                 else loaded.dropped.changed(f_locals))
        if stale:
            log.info("functrain step cache: %s is stale for this step (%s); compiling.", path,
                     stale)
            count("step_cache_stale")
            return None
        count("step_cache_hit")
        return loaded

    def compile(self, key: str | None, fn: types.FunctionType, owner: Any,
                args: tuple[Any, ...], backend: Callable[..., Any]) -> Loaded:
        """Trace and compile ``fn(owner, *args)`` as an artifact; save it under ``key``."""
        unsupported, _ = _compat.aot_guard_names()
        dropped: list[tuple[str, Any]] = []
        failed: list[str] = []

        def keep(entries: list[Any]) -> list[bool]:
            out = []
            for g in entries:
                types_ = (g.guard_type, *g.derived_guard_types)
                ok = not (g.is_global or any(t in unsupported for t in types_))
                if not ok:
                    try:
                        if not g.has_value:
                            raise Unfingerprintable("no value recorded")
                        fp = fingerprint(g.value)
                        if _UNNAMED in g.name:
                            # The globals of a generated function (a namedtuple's __new__),
                            # named by address: trusted only if they hold plain values.
                            if not _plain(fp):
                                raise Unfingerprintable("a generated function's globals")
                        else:
                            dropped.append((g.name, fp))
                    except Unfingerprintable as e:
                        failed.append(f"{g.name}: {e}")
                out.append(ok)
            return out

        count("step_cache_miss")
        aot = _compat.aot_compile_method(fn, owner, args, backend, keep)
        if failed:  # guards nothing could check again here either: Dynamo's own path runs it
            raise Unfingerprintable("guards on " + "; ".join(failed[:3]))
        dropped = sorted(set(dropped), key=repr)
        loaded = Loaded(aot, hit=False, dropped=dropped)
        if key is not None:
            try:
                data = _compat.aot_save(aot)
            except Exception as e:  # runs here all the same; the next process traces again
                log.info("functrain step cache: not saved (%s)", e)
                return loaded
            from .random import _threefry

            self._save(key, {"format": _FORMAT, "key": key, "data": data,
                             "dropped": dropped, "needs_random_ops": _threefry._registered})
        return loaded

    def saved(self, key: str) -> bool:
        """Whether an artifact is saved under ``key`` (not yet checked: `load` does that)."""
        return os.path.exists(os.path.join(directory(), key))

    def lock_path(self, key: str) -> str:
        """The lock file a background compile of ``key`` holds while it compiles."""
        return os.path.join(directory(), key + ".lock")

    def unsaveable(self, key: str) -> bool:
        """Whether an earlier process found this step impossible to save (then it compiles
        the usual way at once, instead of tracing for an artifact first)."""
        return os.path.exists(os.path.join(directory(), key + ".unsaveable"))

    def mark_unsaveable(self, key: str | None) -> None:
        """Remember that this step cannot be saved (something it holds cannot be pickled)."""
        if key is not None:
            self._save(key + ".unsaveable", {"format": _FORMAT, "key": key})

    def _save(self, key: str, saved: dict[str, Any]) -> None:
        folder = directory()
        try:
            os.makedirs(folder, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=folder, delete=False, suffix=".tmp") as f:
                pickle.dump(saved, f, protocol=pickle.HIGHEST_PROTOCOL)
            os.replace(f.name, os.path.join(folder, key))
            count("step_cache_unsaveable" if key.endswith(".unsaveable")
                   else "step_cache_saved")
        except OSError as e:  # a read-only or full disk costs the next start, nothing else
            log.warning("functrain step cache: cannot write to %s (%s).", folder, e)


def _plain(fp: Any) -> bool:
    """Whether a fingerprint holds only constants, builtins, types and modules."""
    if isinstance(fp, tuple) and fp and isinstance(fp[0], str):
        if fp[0] not in _PLAIN:
            return False
        return all(_plain(x) for x in fp[1:] if isinstance(x, tuple))
    return not isinstance(fp, tuple) or all(_plain(x) for x in fp)


def count(name: str) -> None:
    """Count an event in torch's compile counters, group ``functrain``."""
    from torch._dynamo.utils import counters

    counters["functrain"][name] += 1
