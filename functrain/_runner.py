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
import dataclasses
import types
import warnings
from collections.abc import Callable
from typing import Any

import optree
import torch

from . import metrics as _metrics
from . import tree as _tree
from ._donation import check_not_donated, poison, remember_nodes, write_back

__all__ = ["CompiledStep", "RecompileError", "compile_step", "resolve_device"]

BACKENDS = ("eager", "inductor", "cudagraphs", "openxla")


class RecompileError(RuntimeError):
    """The compiled step recompiled after warm-up while ``on_recompile="raise"``.

    Example:
        >>> import functrain as ft
        >>> issubclass(ft.RecompileError, RuntimeError)
        True
    """


def resolve_device(device: str | torch.device | None, *,
                   devices: int | str | None = None) -> torch.device:
    """``"auto"`` -> CUDA when available, else CPU; ``"xla"``, ``"xla:N"``, ``"tpu"`` -> a
    torch_xla device (torch_xla is imported here, and only here); anything else ->
    ``torch.device(device)``.

    Example:
        >>> resolve_device("cpu")
        device(type='cpu')
    """
    if device is None or device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if isinstance(device, torch.device) and device.type == "xla":
        device = str(device)
    if isinstance(device, str) and device.startswith(("xla", "tpu")):
        from . import _xla

        return _xla.device(device, devices)
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"device: expected 'auto', 'cpu', 'cuda', 'cuda:N', 'xla', 'tpu' or a "
                         f"torch.device, got {device!r}.") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device={device!r}: CUDA is not available here (torch "
                             f"{torch.__version__}). HINT: use device='auto' or 'cpu'.")
        if dev.index is None:
            # With its index, so that it equals the device of the tensors placed on it.
            dev = torch.device("cuda", torch.cuda.current_device())
    elif dev.type != "cpu":  # mps, xpu, ...: say so here, not with torch's text at first use
        if dev.type == "mps":
            available = torch.backends.mps.is_available
        else:
            available = getattr(getattr(torch, dev.type, None), "is_available", None)
        if available is None or not available():
            raise ValueError(f"device={device!r}: the {dev.type} backend is not available here "
                             f"(torch {torch.__version__}). HINT: use device='auto' or 'cpu'.")
    return dev


def _check_devices(devices: Any) -> None:
    """Validate the ``devices`` argument: ``None``, ``"all"`` or a positive int."""
    if devices is None or devices == "all":
        return
    if isinstance(devices, bool) or not isinstance(devices, int) or devices < 1:
        raise TypeError(f"devices: expected None, 'all' or a positive int (the number of XLA "
                        f"devices), got {devices!r}. HINT: a list of device ids is not "
                        "supported; data parallelism spans every device (devices='all').")


def _resolve_backend(compile: str | bool, device: torch.device) -> str:
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


def _place(x: Any, device: torch.device, non_blocking: bool) -> Any:
    if isinstance(x, torch.Tensor) and x.device != device:
        return x.to(device, non_blocking=non_blocking)
    return x


def _require_tensors(tree: Any, name: str, hint: str) -> None:
    for path, x in _tree.leaves_with_path(tree, name):
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{path}: expected a tensor, got {type(x).__name__}. HINT: {hint}")


def _batch_signature(batch: Any) -> tuple[Any, ...]:
    return tuple((p, tuple(x.shape), x.dtype) if isinstance(x, torch.Tensor) else (p, None, x)
                 for p, x in _tree.leaves_with_path(batch, "batch"))


_RUNNERS = 0
# Backends whose step returns its new state and metric window instead of writing them into
# the inputs: eager, and openxla, where XLA's executable makes fresh buffers anyway and input
# mutations would cost an extra lazy graph per step.
_FUNCTIONAL = ("eager", "openxla")
# XLA compiles during the first steps are warm-up: the step (the first two calls differ in
# lazy mode), then the metric window's read and reset graphs.
_XLA_WARMUP = 2
NONFINITE = "__nonfinite_step__"  # the window entry of the non-finite guard
NONFINITE_PARAMS = "__nonfinite_params_step__"  # the same, for the new params alone


@dataclasses.dataclass(frozen=True, eq=False)
class FirstStep(_metrics.Metric):
    """The first step of a window at which a condition held (0: never): the runner's
    non-finite guard, merged on the device like any metric and read with the window."""

    step: torch.Tensor

    @classmethod
    def empty(cls, device: Any = None) -> FirstStep:
        return cls(torch.zeros((), dtype=torch.int64, device=device))

    @classmethod
    def where(cls, condition: torch.Tensor, step: torch.Tensor) -> FirstStep:
        return cls(torch.where(condition, step.to(torch.int64), 0))

    def merge(self, other: FirstStep) -> FirstStep:
        return FirstStep(torch.where(self.step > 0, self.step, other.step))

    def compute(self) -> torch.Tensor:
        return self.step


class CompiledStep:
    """A step function compiled and run by functrain; build it with `compile_step`.

    Call it like the step itself: ``state, metrics = step(state, batch)``. ``metrics`` is the
    step's own metric dict (tensors on the device, not synced). The step's metrics are also merged
    into an on-device window that `read_metrics` returns and resets.

    Attributes:
        backend: ``"eager"``, ``"inductor"``, ``"cudagraphs"`` or ``"openxla"``.
        device: where state and batches live.
        compiles: how many graphs have been compiled so far.
        recompiles: list of ``(call_index, reason)`` for each compile after the first.

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
        _train: bool = True,
    ) -> None:
        if not callable(step_fn):
            raise TypeError(f"step_fn: expected a callable step(state, batch) -> "
                            f"(state, metrics), got {type(step_fn).__name__}.")
        if on_recompile not in ("warn", "raise", "ignore"):
            raise ValueError(f"on_recompile: expected 'warn', 'raise' or 'ignore', "
                             f"got {on_recompile!r}.")
        from .precision import Policy

        _check_devices(devices)
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
        self._train = _train
        # The policy casts the batch and enters autocast inside the compiled step; "32" leaves
        # step_fn as it is.
        self.step_fn = self.policy.wrap_step(step_fn, self.device.type, check_loss_scale=_train)
        self.backend = _resolve_backend(compile, self.device)
        self.donate = donate
        self.on_recompile = on_recompile
        self.return_metrics = return_metrics
        self.check_finite = check_finite
        self.compiles = 0
        self.recompiles: list[tuple[int, str]] = []
        self.calls = 0
        self._acc: Any = None
        self._pending_window: list[torch.Tensor] = []
        self._checked_state: Any = None
        self._carrier: Any = None
        self._signatures: list[tuple[Any, ...]] = []
        self._first_batch_len: int | None = None
        self._partial_signature: tuple[Any, ...] | None = None
        self._last_placed: Any = None
        self._fn = self._build()

    # -- compilation -------------------------------------------------------------------------
    def _inner(self, state: Any, batch: Any, acc: Any) -> tuple[Any, Any, Any]:
        new_state, raw_metrics = self.step_fn(state, batch)
        new_acc = _metrics.merge_all(acc, self._window_metrics(raw_metrics, new_state))
        # Returning the step's own metrics costs a little every call (dynamo rebuilds the
        # objects), so the fit loop, which only reads the window, turns it off.
        step_metrics = raw_metrics if self.return_metrics else None
        if self.backend in _FUNCTIONAL:
            return new_state, step_metrics, new_acc
        # In the graph: write the results into the inputs, so the compiled code updates
        # the donated state and the metric window in place.
        if self.donate:
            write_back(state, new_state)
        write_back(acc, new_acc)
        return (None if self.donate else new_state), step_metrics, None

    def _build(self) -> Callable[..., Any]:
        if self.backend == "eager":
            return self._inner
        # Dynamo caches compiled code per code object, with a small limit per object; give
        # each runner its own copy of _inner's code so runners never share (or evict) entries.
        global _RUNNERS
        _RUNNERS += 1
        code = CompiledStep._inner.__code__.replace(co_name=f"functrain_step_{_RUNNERS}")
        fn = types.FunctionType(code, CompiledStep._inner.__globals__, code.co_name)
        self._code_name = code.co_name
        return torch.compile(types.MethodType(fn, self), backend=self._compile_graph,
                             fullgraph=True, dynamic=False)

    def _compile_graph(self, gm: torch.fx.GraphModule, example_inputs: list[Any]) -> Any:
        self.compiles += 1
        if self.backend == "openxla":
            return torch._dynamo.lookup_backend("openxla")(gm, example_inputs)
        from torch._inductor.compile_fx import compile_fx

        patches = {"triton.cudagraphs": True} if self.backend == "cudagraphs" else {}
        return compile_fx(gm, example_inputs, config_patches=patches)

    # -- checks ------------------------------------------------------------------------------
    def _dry_run(self, state: Any, batch: Any) -> Any:
        """Run the step on fake tensors: validates its outputs and returns its metrics."""
        from torch._subclasses.fake_tensor import FakeTensorMode

        # Real tensors the step closes over (class weights, masks) are allowed in.
        mode = FakeTensorMode(allow_non_fake_inputs=True)

        def fake(x: Any) -> Any:
            return mode.from_tensor(x) if isinstance(x, torch.Tensor) else x

        fstate = optree.tree_map(fake, state, namespace=_tree.NAMESPACE)
        fbatch = optree.tree_map(fake, batch, namespace=_tree.NAMESPACE)
        with mode:
            out = self.step_fn(fstate, fbatch)
        if not (isinstance(out, tuple) and len(out) == 2):
            raise TypeError(
                "step_fn must return a pair (state, metrics), got "
                f"{type(out).__name__}{f' of length {len(out)}' if isinstance(out, tuple) else ''}"
                ". HINT: end the step with `return new_state, {'loss': loss}`.")
        new_state, step_metrics = out
        try:
            _tree.assert_trees_match(state, new_state, "step_fn(state, batch)[0]")
        except _tree.TreeMismatchError as e:
            raise _tree.TreeMismatchError(
                f"{e} HINT: the step must return a state with the same tree, shapes and dtypes "
                "as the one it received, so that it compiles once and can update it in place."
            ) from None
        return self._window_metrics(step_metrics, new_state)

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
        """First call with this state: validate, place on the device, build the metric window."""
        state = (self.policy.prepare_state(state) if self._train
                 else self.policy.cast_state(state))
        _require_tensors(state, "state", "keep per-step values in the state as 0-d tensors "
                         "(torch.tensor(...)) so the step compiles once.")
        state = _tree.map(lambda x: _place(x, self.device, False), state)
        if self._acc is None:  # first call: run the step on fake tensors to check it
            fake_metrics = self._dry_run(state, batch)
            self._acc = _tree.map(
                lambda x: torch.zeros(x.shape, dtype=x.dtype, device=self.device),
                _metrics.empty_like(fake_metrics))
            if self._pending_window:
                self.load_metric_window(self._pending_window)
                self._pending_window = []
        remember_nodes(state)
        remember_nodes(self._acc)
        if self.backend == "cudagraphs":
            # The graph writes into the state and the metric window: CUDA graphs replay over
            # fixed addresses, and inductor refuses to capture writes into unmarked inputs.
            for x in _tree.leaves((state, self._acc)):
                torch._dynamo.mark_static_address(x)
        return state

    def place_batch(self, batch: Any) -> Any:
        """Check ``batch`` and start its copy to the device (pinned, non-blocking on CUDA)."""
        if self.mesh is not None:
            if batch is self._last_placed:
                return batch  # placed and sharded already (by fit's prefetch)
        elif type(batch) in (tuple, list):
            if all(type(x) is torch.Tensor and x.device == self.device for x in batch):
                return batch  # fast path: nothing to check or move
        elif type(batch) is torch.Tensor and batch.device == self.device:
            return batch
        _require_tensors(batch, "batch", "the loader must yield tensors (or tuples/dicts of "
                         "tensors); convert other values in the dataset or collate_fn.")
        pin = self.device.type == "cuda"
        batch = _tree.map(
            lambda x: _place(x.pin_memory() if pin and x.device.type == "cpu" else x,
                             self.device, True), batch)
        if self.mesh is not None:
            batch = _tree.map(lambda x: self._xla.shard_batch(x, self.mesh), batch)
            self._last_placed = batch
        return batch

    def _report_recompile(self, batch: Any, fallback: str | None = None) -> None:
        sig = _batch_signature(batch)
        reason = None
        for old in self._signatures:
            diffs = [f"{p}: {tuple(a[1])} -> {tuple(b[1])}" if a[1] != b[1] else
                     f"{p}: dtype {a[2]} -> {b[2]}"
                     for a, b in zip(old, sig) for p in [a[0]] if a[1:] != b[1:]]
            if diffs and len(old) == len(sig):
                reason = "; ".join(diffs)
        self._signatures.append(sig)
        partial = self._is_partial(batch)
        if reason is None:
            reason = (fallback or _dynamo_reason(getattr(self, "_code_name", ""))
                      or "guards failed (state or step changed)")
        self.recompiles.append((self.calls, reason))
        if partial and self._partial_signature in (None, sig):
            # The documented extra compile for a smaller last batch: one such shape only
            # (the same one every epoch); any other new shape is reported.
            self._partial_signature = sig
            return
        msg = (f"functrain: the step recompiled (compile #{self.compiles}) at call "
               f"{self.calls}: {reason}.")
        if self.on_recompile == "raise":
            raise RecompileError(msg + " HINT: keep batch shapes fixed (drop_last=True) and "
                                 "per-step values in the state as tensors.")
        if self.on_recompile == "warn":
            warnings.warn(msg, stacklevel=3)

    def _report_xla_compile(self, batch: Any) -> None:
        """torch_xla compiled during a step after warm-up, with no Dynamo recompile."""
        if self.backend == "eager" and _batch_signature(batch) in self._signatures:
            # Lazy mode, same shapes: torch_xla's occasional graph variant with extra live
            # outputs (see functrain._xla.sync), compiled once; not a shape problem.
            return
        self._report_recompile(batch, "torch_xla compiled a new XLA graph for the step")

    def _is_partial(self, batch: Any) -> bool:
        n = _leading(batch)
        return (n is not None and self._first_batch_len is not None
                and n < self._first_batch_len)

    # -- running -----------------------------------------------------------------------------
    def __call__(self, state: Any, batch: Any) -> tuple[Any, dict[str, torch.Tensor]]:
        """Run one step: ``(state, batch) -> (new_state, metrics)``; ``state`` is donated."""
        check_not_donated(state)
        batch = self.place_batch(batch)
        if state is self._checked_state and self._carrier is not None:
            run_state = self._carrier  # fast path: the object the graph was last called with
        else:  # a state we did not return last: check, cast and place it
            run_state = self._prepare(state, batch)
        if self._first_batch_len is None:
            self._first_batch_len = _leading(batch)
            self._signatures.append(_batch_signature(batch))
        before = self.compiles
        self.calls += 1
        xla = self._xla
        if xla is not None:
            xla_before = xla.compile_count()
        try:
            new_state, step_metrics, new_acc = self._fn(run_state, batch, self._acc)
        except torch._dynamo.exc.FailOnRecompileLimitHit:
            seen = "; ".join(f"call {c}: {r}" for c, r in self.recompiles[-8:])
            raise RecompileError(
                f"functrain: the step would recompile again (it has compiled {self.compiles} "
                f"times; torch stops at torch._dynamo.config.recompile_limit="
                f"{torch._dynamo.config.recompile_limit}). The recompiles: {seen}. HINT: keep "
                "batch shapes fixed (drop_last=True, padding) and per-step values in the state "
                "as tensors.") from None
        if xla is not None:
            # One sync per step, here: it cuts torch_xla's lazy graph (the whole step in lazy
            # mode) and queues it, without waiting.
            xla.sync(collect=self.backend == "eager")
        if self.compiles > before and before > 0:
            self._report_recompile(batch)
        elif xla is not None and self.calls > _XLA_WARMUP and xla.compile_count() > xla_before:
            self._report_xla_compile(batch)
        if self.backend in _FUNCTIONAL:
            self._acc = new_acc
        if self.backend not in _FUNCTIONAL and self.donate:
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
        return new_state, step_metrics

    def read_metrics(self, reset: bool = True) -> dict[str, float]:
        """Compute the metric window on the device and read it with one host transfer.

        Args:
            reset: start a new window afterwards.

        Returns:
            ``{name: value}`` as Python floats; ``{}`` before the first step.
        """
        if self._acc is None:
            return {}
        out = _metrics.compute_all(self._acc)
        if reset:
            self.reset_metrics()
        return out

    def start_run(self) -> None:
        """A new run over (maybe) other data: its one smaller last batch is allowed again."""
        self._partial_signature = None

    def nonfinite_steps(self) -> tuple[int, int]:
        """With ``check_finite``: the first step of the current window with a non-finite
        metric or param, and the first with non-finite params (0: none). One small host read;
        the window is kept."""
        acc = self._acc
        if acc is None or NONFINITE not in acc:
            return 0, 0
        first, params = torch.stack([acc[NONFINITE].step, acc[NONFINITE_PARAMS].step]).tolist()
        return int(first), int(params)

    def metric_window(self) -> list[torch.Tensor]:
        """The metric window's tensors (copies), e.g. to save in a checkpoint."""
        return [] if self._acc is None else [x.clone() for x in _tree.leaves(self._acc)]

    def load_metric_window(self, tensors: list[torch.Tensor]) -> None:
        """Set the metric window from `metric_window`'s output (now, or at the first call)."""
        if self._acc is None:
            self._pending_window = list(tensors)
            return
        for x, v in zip(_tree.leaves(self._acc), tensors):
            x.copy_(v)
        self._sync_window()

    def reset_metrics(self) -> None:
        """Empty the metric window (in place, no host sync)."""
        if self._acc is not None:
            for x in _tree.leaves(self._acc):
                x.zero_()
            self._sync_window()

    def _sync_window(self) -> None:
        # On XLA, run the window's update as a graph of its own (compiled once), rather than
        # letting it join, and change, the next step's graph.
        if self._xla is not None:
            self._xla.sync()


def prefetch(loader: Any, place: Callable[[Any], Any]) -> Any:
    """Iterate ``loader`` one batch ahead: batch i+1's copy to the device is issued before
    batch i is handed out, so on a GPU it overlaps with step i.

    Example:
        >>> list(prefetch([1, 2, 3], lambda b: b * 10))
        [10, 20, 30]
    """
    it = iter(loader)
    try:
        ahead = place(next(it))
    except StopIteration:
        return
    for batch in it:
        current, ahead = ahead, place(batch)
        yield current
    yield ahead


def _leading(batch: Any) -> int | None:
    """The batch size: the first dimension of the batch's first tensor with one."""
    if isinstance(batch, torch.Tensor):
        return batch.shape[0] if batch.dim() else None
    if type(batch) is tuple and batch and type(batch[0]) is torch.Tensor and batch[0].dim():
        return batch[0].shape[0]  # the common (x, y) batch, without flattening
    for x in _tree.leaves(batch):
        if isinstance(x, torch.Tensor) and x.dim():
            return x.shape[0]
    return None


def _dynamo_reason(code_name: str) -> str | None:
    try:
        from torch._dynamo.utils import guard_failures

        for code, reasons in guard_failures.items():
            if getattr(code, "co_name", None) == code_name and reasons:
                return str(reasons[-1])
    except Exception:  # pragma: no cover - private API, best effort
        return None
    return None


def compile_step(
    step_fn: Callable[[Any, Any], tuple[Any, Any]],
    *,
    compile: str | bool = "auto",
    device: str | torch.device = "auto",
    donate: bool = True,
    on_recompile: str = "warn",
    precision: Any = "32",
    devices: int | str | None = None,
) -> CompiledStep:
    """Compile a pure ``step_fn(state, batch) -> (state, metrics)`` into functrain's runner.

    Args:
        step_fn: the training step. ``state`` is any pytree of tensors (usually a
            `functrain.TrainState`); ``metrics`` is a dict of 0-d tensors (each the mean over
            a window) or `functrain.metrics` values.
        compile: ``"auto"`` (CUDA graphs on a GPU, inductor on CPU, openxla on XLA),
            ``"inductor"``, ``"cudagraphs"``, ``"openxla"``, ``"eager"`` (no compilation;
            torch_xla's lazy tensors on XLA), or True/False.
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
                        on_recompile=on_recompile, precision=precision, devices=devices)

