"""The compiled-step runner: placement, whole-step compile, donation, on-device metrics.

`compile_step(step_fn)` turns a pure ``step_fn(state, batch) -> (state, metrics)`` into a
callable with the same signature that

* moves the state (once) and each batch to the device,
* compiles the whole step (forward, backward, optimizer, metric merge) as one graph with
  ``torch.compile(fullgraph=True, dynamic=False)``,
* donates the input state: new values are written into the old tensors inside the graph, so
  memory is updated in place while the user's code stays pure; the old state object is then
  invalid (`functrain.DonatedStateError` on use),
* merges the step's metrics into an on-device accumulator with no host sync; the host reads
  it only when asked (`CompiledStep.read_metrics`),
* checks the step once before the first real call by running it on fake tensors (no compute,
  no memory): a wrong return structure, a state whose tree, shapes or dtypes change, or a bad
  metric fails there, naming the leaf path,
* counts compilations, and reports any recompilation after the first with its reason (or raises,
  with ``on_recompile="raise"``).
"""

from __future__ import annotations

import copy
import functools
import time
import types
from collections.abc import Callable
from typing import Any

import torch

from . import _background, _compat, _step_cache
from . import metrics as _metrics
from . import tree as _tree
from ._backend import FUNCTIONAL, compile_graph, compile_method, own_code, resolve_backend
from ._compile_status import Compiling
from ._donation import check_not_donated, poison, remember_nodes, write_back
from ._errors import check_choice, check_int
from ._placement import batch_size, check_devices, place, require_tensors, resolve_device
from ._recompile import RecompileError, RecompileGuard
from ._step_cache import StepCache, Unsaved
from ._step_checks import checked_call
from ._window import NONFINITE, NONFINITE_PARAMS, FirstStep, MetricWindow

__all__ = ["CompiledStep", "RecompileError", "compile_step", "resolve_device"]

# XLA compiles during the first steps are warm-up: the step (the first two calls differ in
# lazy mode), then the metric window's read and reset graphs.
_XLA_WARMUP = 2


class CompiledStep:
    """A step function compiled and run by functrain; build it with `compile_step`.

    Call it like the step itself: ``state, metrics = step(state, batch)``. ``metrics`` is the
    step's own metric dict (tensors on the device, not synced). The step's metrics are also
    merged into an on-device `functrain.MetricWindow` that `read_metrics` returns and resets. A
    loop that keeps its own window calls `run` instead.

    Args:
        step_fn, compile, device, donate, on_recompile, precision, devices: see
            `compile_step`.
        return_metrics: return the step's own metrics from each call (``False``: ``None``,
            which saves rebuilding them every call when only the window is read).
        check_finite: also test every step's metrics and new ``params`` for inf/NaN on the
            device, recording the first bad step in the window (read with it, no extra sync).
        train: ``False`` for an evaluation step: the state is only cast to the precision
            policy's dtypes (no loss scale is attached).
        cache: see `compile_step`.

    Attributes:
        backend: ``"eager"``, ``"inductor"``, ``"cudagraphs"`` or ``"openxla"``.
        device: where state and batches live.
        compiles: how many graphs have been compiled (or loaded from the step cache) so far.
        cache_hits: how many of those the step cache served (see `compile_step`'s ``cache``).
        compile_time: seconds spent in the calls that compiled them (each such call's whole
            time: tracing, compiling and the first run).
        status: ``None``, or called with ``"compiling (N s)"`` about once a second while a
            first call compiles, then with ``None`` (`fit` points it at its progress bar).
        recompiles: list of ``(call_index, reason)`` for each compile after the first.
        background: with ``compile="auto"`` on a CPU, the plan that runs the steps eagerly
            while a forked child process compiles the step into the step cache when it is
            cold, then switches to it (``functrain._background.BackgroundSwitch``; its
            ``note`` says what happened); ``None`` otherwise or with
            ``FUNCTRAIN_BACKGROUND_COMPILE=0``.

    Example:
        >>> import torch, functrain as ft
        >>> run = ft.CompiledStep(lambda state, batch: (state, {"n": batch.sum()}),
        ...                       compile="eager", donate=False)
        >>> _ = run({"w": torch.zeros(2)}, torch.ones(3))
        >>> run.read_metrics()
        {'n': 3.0}
    """

    def __init__(
        self,
        step_fn: Callable[[Any, Any], tuple[Any, Any]],
        *,
        compile: str | bool = "auto",
        device: str | torch.device = "auto",
        donate: bool = True,
        on_recompile: str = "warn",
        return_metrics: bool = True,
        precision: Any = "32",
        check_finite: bool = False,
        devices: int | str | None = None,
        train: bool = True,
        steps_per_call: int = 1,
        cache: bool = True,
    ) -> None:
        if not callable(step_fn):
            raise TypeError(f"step_fn: expected a callable step(state, batch) -> "
                            f"(state, metrics), got {type(step_fn).__name__}.")
        check_choice("on_recompile", on_recompile, ("warn", "raise", "ignore"))
        check_int("steps_per_call", steps_per_call, minimum=1)
        from .precision import Policy

        check_devices(devices)
        self.devices = devices
        self.device = resolve_device(device, devices=devices)
        self._xla: Any = None  # functrain._xla on an XLA device (it imports torch_xla)
        if self.device.type == "xla":
            from . import _xla

            self._xla = _xla
        self.mesh = None
        if devices is not None:
            if self.device.type != "xla":
                raise ValueError(
                    f"devices={devices!r}: splitting each batch across devices is done by "
                    f"torch_xla's SPMD in this version; device={self.device} has no such mode. "
                    "HINT: use device='xla' (or 'tpu'), or leave devices=None.")
            self.mesh = self._xla.data_mesh(devices)
        self.policy = precision if isinstance(precision, Policy) else Policy.from_name(precision)
        self.train = train
        # The policy casts the batch and enters autocast inside the compiled step; "32" leaves
        # step_fn as it is.
        self.step_fn = self.policy.wrap_step(step_fn, self.device.type, check_loss_scale=train)
        self.backend = resolve_backend(compile, self.device)
        self.donate = donate
        self.on_recompile = on_recompile
        self.return_metrics = return_metrics
        self.check_finite = check_finite
        self.steps_per_call = steps_per_call
        self.compiles = 0
        self.compile_time = 0.0
        # functrain's step cache (inductor only): a later process loads the compiled step
        # instead of tracing it again. `cache_hits` counts the compiles it served.
        self.cache_hits = 0
        self._cache: StepCache | None = None
        if cache and self.backend == "inductor" and _step_cache.enabled():
            self._cache = StepCache(step_fn, (
                self.backend, str(self.device), donate, return_metrics, check_finite, train,
                steps_per_call, repr(self.policy)))
        # compile="auto" on a cold CPU start: eager steps while a child process compiles.
        self.background = (_background.BackgroundSwitch() if compile == "auto" and steps_per_call
                           == 1 and self._cache is not None and _background.enabled() else None)
        self._auto_active = self.background is not None
        self._loaded: dict[int, Any] = Unsaved()  # steps -> a cached step's guard check
        # Step counts (1, steps_per_call) whose cached step checks all its dropped guards at
        # its next call.
        self._recheck = {1, steps_per_call}
        self._dynamo_fns: dict[int, Any] = Unsaved()  # steps -> torch.compile's, for misses
        # Runtime-only values (pickled as empty: Dynamo pickles the runner into a step cache
        # artifact's guard state, and a progress bar holds a file).
        self._runtime = Unsaved(status=None)
        self.calls = 0
        self._window: MetricWindow | None = None  # the window `__call__` merges into
        self._empty: Any = None  # the window's structure, from the first call's dry run
        self._seen_window: MetricWindow | None = None
        self._checked_state: Any = None
        self._carrier: Any = None
        self._last_placed: Any = None
        # Eager steps are checked on their first real call instead of a fake-tensor dry run
        # (torch_xla's lazy "eager" keeps the dry run: its first call would record a graph).
        self._real_first_call = self.backend == "eager" and self.device.type != "xla"
        # One step per call (`run`), and with steps_per_call=K > 1 also K steps per call
        # (`run_steps`), each compiled (once) on its first use.
        # A compiled backend's functions are made at their first call (`_compiled_fn`):
        # `torch.compile` imports Dynamo, ~1 s that a run that stays eager (a cold
        # compile="auto" start) does without; `_code` holds the method copies they compile.
        self._fns: dict[int, Any] = Unsaved()
        self._code: dict[int, types.FunctionType] = Unsaved()
        self._guards: dict[int, RecompileGuard] = {}
        self._calls = {1: 0, steps_per_call: 0}
        for k in {1, steps_per_call}:
            method = CompiledStep._inner if k == 1 else CompiledStep._inner_steps
            if self.backend == "eager":
                self._fns[k], code_name = method.__get__(self), ""
            else:
                self._code[k] = own_code(method)
                code_name = self._code[k].__code__.co_name
            self._guards[k] = RecompileGuard(on_recompile, code_name)

    @property
    def status(self) -> Callable[[str | None], Any] | None:
        """Called with ``"compiling (N s)"`` once a second while a step compiles, then with
        ``None`` (`fit` points it at its progress bar)."""
        return self._runtime.get("status")

    @status.setter
    def status(self, report: Callable[[str | None], Any] | None) -> None:
        self._runtime["status"] = report

    @property
    def recompiles(self) -> list[tuple[int, str]]:
        return sorted(r for g in self._guards.values() for r in g.recompiles)

    def _compile_graph(self, gm: torch.fx.GraphModule, example_inputs: list[Any]) -> Any:
        self.compiles += 1
        return compile_graph(self.backend, gm, example_inputs)

    def _inner(self, state: Any, batch: Any, acc: Any) -> tuple[Any, Any, Any]:
        new_state, raw_metrics = self.step_fn(state, batch)
        new_acc = _metrics.merge_all(acc, self._window_metrics(raw_metrics, new_state))
        return self._outputs(state, acc, new_state, raw_metrics, new_acc)

    def _inner_steps(self, state: Any, batches: Any, acc: Any) -> tuple[Any, Any, Any]:
        # K steps unrolled in program order, each merging into the window as a single call
        # does: the same operations as K calls of `_inner`, in one graph.
        new_state, new_acc = state, acc
        for i in range(self.steps_per_call):
            new_state, raw_metrics = self.step_fn(
                new_state, _tree.map(lambda x, i=i: x[i], batches))
            new_acc = _metrics.merge_all(new_acc, self._window_metrics(raw_metrics, new_state))
        return self._outputs(state, acc, new_state, raw_metrics, new_acc)

    def _outputs(self, state: Any, acc: Any, new_state: Any, raw_metrics: Any,
                 new_acc: Any) -> tuple[Any, Any, Any]:
        # Returning the step's own metrics costs a little every call (dynamo rebuilds the
        # objects), so the fit loop, which only reads the window, turns it off.
        step_metrics = raw_metrics if self.return_metrics else None
        if self.backend in FUNCTIONAL:
            return new_state, step_metrics, new_acc
        # In the graph: write the results into the inputs, so the compiled code updates
        # the donated state and the metric window in place.
        if self.donate:
            write_back(state, new_state)
        write_back(acc, new_acc)
        return (None if self.donate else new_state), step_metrics, None

    def _first_compiled_call(self, steps: int, *args: Any) -> tuple[Any, Any, Any]:
        """The first call of a compiled step method: through the step cache where it is on
        (load the compiled step, or trace, compile and save it), else Dynamo as usual."""
        loaded = None
        if (self._cache is not None and self.device.type == "cpu"
                and type(self)._compile_graph is _COMPILE_GRAPH  # not a replaced compiler
                and not _step_cache.in_process_group()):  # a graph holds this rank's rank
            method = CompiledStep._inner if steps == 1 else CompiledStep._inner_steps
            loaded = self._cache.first_call(self, method, args)
        if loaded is None:
            return self._compiled_fn(steps)(*args)
        self._install(steps, loaded)
        return self._fns[steps](*args)

    def _compiled_fn(self, steps: int) -> Any:
        """``torch.compile``'s function of the step method for ``steps`` steps per call,
        made at its first use (see ``_code``)."""
        fn = self._fns.get(steps)
        if fn is None:
            fn = self._fns[steps] = compile_method(
                self._code[steps], self, lambda gm, inputs: self._compile_graph(gm, inputs))
        return fn

    def _install(self, steps: int, loaded: Any) -> None:
        """Run the step cache's ``loaded`` step from now on (Dynamo's for calls it rejects)."""
        self._dynamo_fns[steps] = self._compiled_fn(steps)
        self._fns[steps] = functools.partial(loaded.fn, self)
        self._loaded[steps] = loaded

    def begin_run(self) -> None:
        """A new run (`fit`, `evaluate`) starts with this runner: one smaller last batch is
        allowed again, and a cached step's dropped guards are all checked at its next call."""
        for guard in self._guards.values():
            guard.start_run()
        self._recheck = {1, self.steps_per_call}

    # -- checks ------------------------------------------------------------------------------
    def _dry_run(self, state: Any, batch: Any) -> Any:
        """Run the step on fake tensors: validates its outputs and returns its metrics."""
        new_state, step_metrics = checked_call(
            self.step_fn, state, batch, fake_mode=_compat.fake_tensor_mode(),
            where="step_fn" if self.train else "eval_fn", stacklevel=6)
        return self._window_metrics(step_metrics, new_state)

    def _first_real_call(self, state: Any, batch: Any) -> tuple[Any, Any, dict[str, Any]]:
        """Eager backend: run the step's first call for real (no fake-tensor dry run, so print,
        pdb and .item() see real values and side effects run once) and check its outputs."""
        new_state, raw_metrics = checked_call(self.step_fn, state, batch, stacklevel=6)
        window_metrics = self._window_metrics(raw_metrics, new_state)
        self._empty = _metrics.empty_like(window_metrics)
        return new_state, raw_metrics, window_metrics

    def _window_metrics(self, raw_metrics: Any, new_state: Any) -> dict[str, Any]:
        """The step's metrics as merged into the window, plus the non-finite guard if on."""
        window = _metrics.to_metrics(raw_metrics)
        if self.check_finite:
            from .precision import all_finite

            params_finite = all_finite(getattr(new_state, "params", new_state))
            finite = all_finite(_tree.leaves(raw_metrics)) & params_finite
            step = getattr(new_state, "step", None)
            step = step if step is not None else torch.ones((), dtype=torch.int64)
            window[NONFINITE] = FirstStep.where(~finite, step)
            window[NONFINITE_PARAMS] = FirstStep.where(~params_finite, step)
        return window

    def _prepare(self, state: Any, batch: Any) -> Any:
        """A state this runner did not return last: validate, cast and place it."""
        state = (self.policy.prepare_state(state) if self.train
                 else self.policy.cast_state(state))
        require_tensors(state, "state", "keep per-step values in the state as 0-d tensors "
                        "(torch.tensor(...)) so the step compiles once.")
        # Detached: a leaf that requires grad (params from torch.func.stack_module_state) cannot
        # be written in place by donation, and functrain differentiates with torch.func anyway.
        state = _tree.map(lambda x: place(x.detach() if x.requires_grad else x, self.device,
                                          False), state)
        if self._empty is None and not self._real_first_call:
            # first compiled call: run the step on fake tensors to check it
            fake_metrics = self._dry_run(state, batch)
            self._empty = _metrics.empty_like(fake_metrics)
        remember_nodes(state)
        if self.backend == "cudagraphs":
            # The graph writes into the state: CUDA graphs replay over fixed addresses, and
            # inductor refuses to capture writes into unmarked inputs.
            for x in _tree.leaves(state):
                _compat.mark_static_address(x)
        return state

    def _adopt(self, window: MetricWindow | None) -> MetricWindow:
        """A window this runner did not return last: a new empty one for ``None``."""
        if window is None:
            window = MetricWindow(_tree.map(
                lambda x: torch.zeros(x.shape, dtype=x.dtype, device=self.device), self._empty))
        elif not isinstance(window, MetricWindow):
            raise TypeError(f"window: expected a functrain.MetricWindow or None, got "
                            f"{type(window).__name__}. HINT: pass the window the previous "
                            "call returned, or None to start one.")
        remember_nodes(window.metrics)
        if self.backend == "cudagraphs":
            for x in _tree.leaves(window.metrics):
                _compat.mark_static_address(x)
        return window

    def place_batch(self, batch: Any) -> Any:
        """Check ``batch`` and start its copy to the device (pinned, non-blocking on CUDA)."""
        if self.mesh is not None:
            if batch is self._last_placed:
                return batch  # placed and sharded already (by fit's prefetch)
        elif type(batch) in (tuple, list):
            for x in batch:  # (a loop, not all(...): no generator to resume per element)
                if type(x) is not torch.Tensor or x.device != self.device:
                    break
            else:
                return batch  # fast path: nothing to check or move
        elif type(batch) is torch.Tensor and batch.device == self.device:
            return batch
        require_tensors(batch, "batch", "the loader must yield tensors (or tuples/dicts of "
                        "tensors); convert other values in the dataset or collate_fn.")
        pin = self.device.type == "cuda"
        batch = _tree.map(
            lambda x: place(x.pin_memory() if pin and x.device.type == "cpu" else x,
                            self.device, True), batch)
        if self.mesh is not None:
            batch = _tree.map(lambda x: self._xla.shard_batch(x, self.mesh), batch)
            self._last_placed = batch
        return batch

    # -- running -----------------------------------------------------------------------------
    def __call__(self, state: Any, batch: Any) -> tuple[Any, dict[str, torch.Tensor]]:
        """Run one step: ``(state, batch) -> (new_state, metrics)``; ``state`` is donated."""
        state, metrics, self._window = self._run(state, batch, self._window)
        return state, metrics

    def run(self, state: Any, batch: Any, window: MetricWindow | None
            ) -> tuple[Any, MetricWindow]:
        """Run one step, merging its metrics into ``window``: ``-> (new_state, new_window)``.

        Both ``state`` and ``window`` are donated (use the returned ones); ``window=None``
        starts a new, empty window. The loop reads it with `MetricWindow.compute`.
        """
        state, _, window = self._run(state, batch, window)
        return state, window

    def run_steps(self, state: Any, batches: Any, window: MetricWindow | None
                  ) -> tuple[Any, MetricWindow]:
        """Run ``steps_per_call`` steps in one call, over ``batches`` stacked along a new
        first axis (see `functrain.stack_batches`): ``-> (new_state, new_window)``.

        The same numbers as that many calls of `run` on the batches in order (the steps are
        unrolled into one graph, each merging its metrics into the window in turn); the host
        pays its per-call cost once. ``state`` and ``window`` are donated, as in `run`.

        Raises:
            ValueError: ``steps_per_call`` is 1, or the batches are not stacked by it.
        """
        k = self.steps_per_call
        if k == 1:
            raise ValueError("run_steps needs a runner built with steps_per_call > 1, got "
                             "steps_per_call=1. HINT: ft.compile_step(step, steps_per_call=8).")
        lead = {x.shape[0] if isinstance(x, torch.Tensor) and x.dim() else None
                for x in _tree.leaves(batches)}
        if lead != {k}:
            raise ValueError(f"batches: expected every leaf stacked along a first axis of "
                             f"steps_per_call={k}, got first dimensions {sorted(map(str, lead))}."
                             " HINT: functrain.stack_batches(list_of_batches).")
        state, _, window = self._run(state, batches, window, steps=k)
        return state, window

    def _run(self, state: Any, batch: Any, window: MetricWindow | None, steps: int = 1
             ) -> tuple[Any, Any, MetricWindow]:
        if self._auto_active:  # compile="auto": eager until the background compile is done
            out = self.background.run(self, state, batch, window, steps)
            if out is not None:
                return out
            self._auto_active = False
        check_not_donated(state)
        batch = self.place_batch(batch)
        one = batch if steps == 1 else _tree.map(lambda x: x[0], batch)
        if state is self._checked_state and self._carrier is not None:
            run_state = self._carrier  # fast path: the object the graph was last called with
        else:
            run_state = self._prepare(state, one)
            self._recheck = {1, self.steps_per_call}  # a state from elsewhere: a new run?
        first = None
        if self._empty is None:  # eager: the first real call checks the step
            if steps == 1:
                first = self._first_real_call(run_state, batch)
            else:  # K steps in one eager call: check the step on fake tensors first
                self._empty = _metrics.empty_like(self._dry_run(run_state, one))
        if window is None or window is not self._seen_window:
            window = self._adopt(window)
        guard = self._guards[steps]
        if self._calls[steps] == 0:
            guard.first_batch(batch, batch_size(one))
        self._calls[steps] += 1
        before = self.compiles
        self.calls += 1
        stale = None  # why a cached step was left for Dynamo's (a changed dropped guard)
        handover = False  # ... for a structural one, not reported as a recompile
        xla = self._xla
        if xla is not None:
            xla_before = xla.compile_count()
        t0 = time.perf_counter()
        try:
            if first is not None:  # eager: the step already ran for real, checked
                new_state, raw_metrics, window_metrics = first
                new_acc = _metrics.merge_all(window.metrics, window_metrics)
                step_metrics = raw_metrics if self.return_metrics else None
            elif self._calls[steps] == 1 and self.backend != "eager":  # compiles: say so
                with Compiling(self.status):
                    new_state, step_metrics, new_acc = self._first_compiled_call(
                        steps, run_state, batch, window.metrics)
            else:
                fn = self._fns[steps]
                loaded = self._loaded.get(steps)
                if loaded is not None:
                    # A cached step (step cache). Dynamo's serializable guards run on every
                    # call: a call they reject goes to Dynamo's path, the cached step stays.
                    # The guards the artifact dropped (`DroppedGuards`) run on every call for
                    # values in the user's modules (a change is a recompile, as in Dynamo),
                    # all of them at a new run (a change hands over quietly: the check is
                    # stricter than Dynamo's). Either way the trace's constants are stale, so
                    # the cached step is left for good and Dynamo compiles the step anew.
                    f_locals = dict(zip(loaded.names, (self, run_state, batch, window.metrics)))
                    stale = loaded.dropped.changed_values(f_locals)
                    if stale is None and steps in self._recheck:
                        stale = loaded.dropped.hand_over(f_locals)
                        handover = stale is not None
                    self._recheck.discard(steps)
                    if stale:
                        fn = self._fns[steps] = self._dynamo_fns[steps]
                        del self._loaded[steps]
                    elif not loaded.check(f_locals):
                        fn = self._dynamo_fns[steps]
                new_state, step_metrics, new_acc = fn(run_state, batch, window.metrics)
        except Exception as e:
            if not _compat.is_recompile_limit_error(e):
                raise
            seen = "; ".join(f"call {c}: {r}" for c, r in guard.recompiles[-8:])
            raise RecompileError(
                f"functrain: the step would recompile again (it has compiled {self.compiles} "
                f"times; torch stops at its recompile_limit={_compat.recompile_limit()}). The "
                f"recompiles: {seen}. HINT: keep batch shapes fixed (drop_last=True, padding) "
                "and per-step values in the state as tensors.") from None
        if self.compiles > before:
            self.compile_time += time.perf_counter() - t0
        if xla is not None:
            # One sync per step, here: it cuts torch_xla's lazy graph (the whole step in lazy
            # mode) and queues it, without waiting.
            xla.sync(collect=self.backend == "eager")
        if self.compiles > before and self._calls[steps] > 1 and not (
                handover and guard.seen(batch)):
            guard.report(self.calls, self.compiles, batch, batch_size(one), stale)
        elif xla is not None and self.calls > _XLA_WARMUP and xla.compile_count() > xla_before:
            # torch_xla compiled during a step after warm-up, with no Dynamo recompile. In lazy
            # mode with the same shapes, that is torch_xla's occasional graph variant with
            # extra live outputs (see functrain._xla.sync), compiled once: not reported.
            if not (self.backend == "eager" and guard.seen(batch)):
                guard.report(self.calls, self.compiles, batch, batch_size(one),
                             "torch_xla compiled a new XLA graph for the step")
        if self.backend in FUNCTIONAL:
            window = MetricWindow(new_acc)
        self._seen_window = window
        if self.backend not in FUNCTIONAL and self.donate:
            # The graph wrote the new values into run_state's tensors. Dynamo checks its
            # guards faster on an object it has seen, so the runner keeps passing that same
            # object (the carrier) and hands the caller a fresh one over the same tensors.
            self._carrier = run_state
            new_state = copy.copy(run_state)
        else:
            self._carrier = new_state
        if self.donate:
            for old in (state, run_state):
                if old is not new_state and old is not self._carrier:
                    poison(old)  # same contract on every backend: the input is consumed
        self._checked_state = new_state
        if self.backend == "cudagraphs" and step_metrics is not None:
            # A CUDA graph's outputs live in memory its next replay overwrites; the caller may
            # keep these past the next step.
            step_metrics = _tree.map(torch.clone, step_metrics)
        return new_state, step_metrics, window

    def last_state(self) -> Any:
        """The state the latest call returned (e.g. to recover it after an interruption)."""
        return self._checked_state

    def read_metrics(self, reset: bool = True) -> dict[str, float]:
        """Compute the metric window of `__call__` and read it with one host transfer.

        Args:
            reset: start a new window afterwards.

        Returns:
            ``{name: value}`` as Python floats; ``{}`` before the first step.
        """
        if self._window is None:
            return {}
        out = self._window.compute()
        if reset:
            self._window.reset()
        return out


_COMPILE_GRAPH = CompiledStep._compile_graph  # the step cache saves only what this compiles


def compile_step(
    step_fn: Callable[[Any, Any], tuple[Any, Any]],
    *,
    compile: str | bool = "auto",
    device: str | torch.device = "auto",
    donate: bool = True,
    on_recompile: str = "warn",
    precision: Any = "32",
    devices: int | str | None = None,
    steps_per_call: int = 1,
    cache: bool = True,
) -> CompiledStep:
    """Compile a pure ``step_fn(state, batch) -> (state, metrics)`` into functrain's runner.

    Args:
        step_fn: the training step. ``state`` is any pytree of tensors (usually a
            `functrain.TrainState`); ``metrics`` is a dict of 0-d tensors (each the mean over
            a window) or `functrain.metrics` values.
        compile: ``"auto"`` (CUDA graphs on a GPU, inductor on CPU, openxla on XLA),
            ``"inductor"``, ``"cudagraphs"``, ``"openxla"``, ``"eager"`` (no compilation;
            torch_xla's lazy tensors on XLA), or True/False. On a CPU, ``"auto"`` never
            waits for a cold compile: when the step cache (``cache``) holds no compiled step
            for this step, the steps run eagerly while a forked child process at the lowest
            priority compiles and saves it, and the run switches to the compiled step once
            it is saved (a run that ends first leaves the child to finish, so the next start
            is warm). The switch step depends on timing, so such a cold run is not bitwise
            reproducible; ``"inductor"`` and ``"eager"`` are. ``FUNCTRAIN_BACKGROUND_COMPILE=0``
            makes ``"auto"`` compile in the foreground, as ``"inductor"`` does.
        device: ``"auto"``, ``"cpu"``, ``"cuda"``, ``"xla"``, ``"tpu"``, ... where state and
            batches are placed (XLA needs torch_xla; see the README, "Run on TPU").
        donate: reuse the input state's memory for the output (in place). The input state
            object is then invalid. ``False`` keeps old states usable, at the cost of new
            allocations every step.
        on_recompile: after the first compile, a recompile is ``"warn"``-ed with its reason,
            ``"raise"``-d as `RecompileError`, or ``"ignore"``-d. A smaller last batch (a
            partial batch at the end of an epoch) compiles once more and is never reported;
            pass ``drop_last=True`` to the DataLoader to avoid that compile.
        precision: ``"32"``, ``"bf16-mixed"``, ``"16-mixed"``, ``"bf16-true"`` or a
            `functrain.precision.Policy`: applied around the step inside the compiled graph
            (see `functrain.precision`). ``"16-mixed"`` attaches a dynamic loss scale to
            ``state.extras["loss_scale"]`` on the first call.
        devices: on XLA only, ``"all"`` (or the device count) splits every batch along its
            first dimension across all of torch_xla's devices with SPMD (data parallel; the
            state is replicated). The result is that of one device on the whole batch. It
            switches the process to SPMD mode, so ask for it before any other XLA work.
        steps_per_call: K > 1 also compiles K consecutive steps as one call
            (`CompiledStep.run_steps` over K stacked batches), so the host's per-call cost
            (Python, guards, launch) is paid once per K steps, like ``steps_per_execution``
            on TPUs. Pass the runner to `functrain.fit`, which then groups the loader's
            batches K at a time (the rest of an epoch runs one step per call) and logs,
            evaluates and checkpoints at the first K-boundary at or after each due step.
            The numbers equal K single steps; each step shape compiles once.
        cache: with the inductor backend on CPU, save the compiled step (traced bytecode,
            guards, compiled graph) under ``<Inductor cache dir>/functrain_steps`` so that
            the next process with the same step loads it instead of tracing it again (a
            warm start of seconds less). An artifact is used only if functrain, torch, the
            step's code and closure, every traced function's source, the input shapes and
            dtypes and all of Dynamo's guards still match; otherwise the step compiles as
            usual. Not used while a ``torch.distributed`` process group is initialized (a
            traced step holds its rank and world size). ``False``, or the environment
            variable ``FUNCTRAIN_STEP_CACHE=0``, turns it off. ``TORCHINDUCTOR_CACHE_DIR``
            moves it with torch's own caches.

    Returns:
        A `CompiledStep`.

    Example:
        >>> import torch, functrain as ft
        >>> model = torch.nn.Linear(4, 1)
        >>> def step(state, batch):
        ...     x, y = batch
        ...     def loss_fn(params):
        ...         out, _ = ft.call(model, params, state.buffers, x)
        ...         return ((out - y) ** 2).mean()
        ...     loss, grads = torch.func.grad_and_value(loss_fn)(state.params)[::-1]
        ...     return state.apply_gradients(grads), {"loss": loss}
        >>> run = ft.compile_step(step, compile="eager")
        >>> state = ft.TrainState.create(model, ft.optim.sgd(0.1))
        >>> for _ in range(3):
        ...     state, metrics = run(state, (torch.ones(8, 4), torch.zeros(8, 1)))
        >>> int(state.step), sorted(run.read_metrics())
        (3, ['loss'])
    """
    return CompiledStep(step_fn, compile=compile, device=device, donate=donate,
                        on_recompile=on_recompile, precision=precision, devices=devices,
                        steps_per_call=steps_per_call, cache=cache)

