"""`evaluate`, `eager` (an evaluation that runs eagerly while training is compiled), and the
cache of runners that `fit` and `evaluate` build per step function."""

from __future__ import annotations

import functools
import weakref
from collections.abc import Callable, Iterable
from typing import Any

import torch

from . import _background
from ._backend import resolve_backend
from ._data_helpers import loader_len
from ._placement import resolve_device
from ._runner import CompiledStep
from ._window import MetricWindow

__all__ = ["Evaluator", "check_loader", "eager", "evaluate", "runner_for"]

# Runners built by fit/evaluate, per step function and options, so that calling fit again
# with the same step (more epochs, a notebook re-run, evaluate after fit) reuses the compiled
# graph instead of compiling again. Entries go away with their function.
_RUNNERS: weakref.WeakKeyDictionary[Any, dict[tuple[Any, ...], CompiledStep]] = (
    weakref.WeakKeyDictionary())


def runner_for(fn: Callable[..., Any], *, compile: Any, device: Any, donate: bool,
               on_recompile: str = "warn", precision: Any = "32", check_finite: bool = False,
               train: bool = True, devices: int | str | None = None) -> CompiledStep:
    """The cached `CompiledStep` for ``fn`` with these options (built on first use)."""
    # Keyed by the resolved device and backend, so that "auto" and what it resolves to share
    # one runner (unless "auto" may compile in the background: functrain._background).
    from .precision import Policy

    dev = resolve_device(device, devices=devices)
    policy = precision if isinstance(precision, Policy) else Policy.from_name(precision)
    key = (resolve_backend(compile, dev), compile == "auto" and _background.enabled(),
           str(dev), donate, on_recompile, repr(policy), check_finite, train, str(devices))
    try:
        per_fn = _RUNNERS.setdefault(fn, {})
    except TypeError:  # not weak-referenceable: no reuse
        per_fn = {}
    runner = per_fn.get(key)
    if runner is None:
        runner = CompiledStep(_eval_step(fn) if not train else fn, compile=compile,
                              device=device, donate=donate, on_recompile=on_recompile,
                              return_metrics=False, precision=precision,
                              check_finite=check_finite, devices=devices, train=train)
        per_fn[key] = runner
    runner.begin_run()
    return runner


def check_loader(loader: Any, name: str) -> None:
    """An iterable of batches; a sized one must not be empty."""
    if not isinstance(loader, Iterable):
        raise TypeError(f"{name}: expected an iterable of batches (a DataLoader, a list...), "
                        f"got {type(loader).__name__}.")
    if loader_len(loader) == 0:
        raise ValueError(f"{name} is empty: it yields no batches. HINT: check the dataset's "
                         "size and the batch size (drop_last=True drops a lone partial batch).")


class eager:  # noqa: N801 - a marker used like a function: eval_fn=ft.eager(eval_fn)
    """Mark ``fn`` to run eagerly (plain Python on real tensors), whatever the compile setting.

    For an evaluation that needs what a compiled graph cannot do, while training stays
    compiled: torchmetrics (a stateful metric's ``update``, functional metrics built on
    ``bincount``), ``.item()``, ``print``, Python branches on values. `functrain.fit` runs a
    marked ``eval_fn`` eagerly (the sanity evaluation too) on the training device and under
    its precision policy, while the training step compiles as ``compile=`` says;
    `functrain.evaluate` runs a marked function eagerly whatever its ``compile=``. Metrics
    are merged as in a compiled evaluation (return ``{}`` when a torchmetrics object keeps
    them).

    Args:
        fn: ``fn(state, batch) -> metrics``.

    Example:
        >>> import torch, functrain as ft
        >>> seen = []
        >>> def eval_fn(state, batch):
        ...     seen.append(batch.sum().item())  # a host read: fine eagerly
        ...     return {"mean": batch.mean()}
        >>> ft.evaluate(ft.eager(eval_fn), None, [torch.ones(2), torch.zeros(2)],
        ...             compile="inductor")
        {'mean': 0.5}
        >>> seen
        [2.0, 0.0]
    """

    def __init__(self, fn: Callable[[Any, Any], Any]) -> None:
        if not callable(fn):
            raise TypeError(f"eager: expected a callable fn(state, batch) -> metrics, got "
                            f"{type(fn).__name__}.")
        self.fn = fn.fn if isinstance(fn, eager) else fn
        functools.update_wrapper(self, self.fn)

    def __call__(self, state: Any, batch: Any) -> Any:
        return self.fn(state, batch)

    def __repr__(self) -> str:
        return f"functrain.eager({self.fn!r})"


def _unmark(fn: Any, compile: Any) -> tuple[Any, Any]:
    """``(fn, compile)``, or for an `eager`-marked function ``(the function, "eager")``."""
    return (fn.fn, "eager") if isinstance(fn, eager) else (fn, compile)


def _eval_step(eval_fn: Callable[[Any, Any], Any]) -> Callable[[Any, Any], tuple[Any, Any]]:
    def step(state: Any, batch: Any) -> tuple[Any, Any]:
        return state, eval_fn(state, batch)

    return step


class Evaluator:
    """Runs ``eval_fn`` compiled over a loader, its metrics merged in a window on the device.

    ``like`` is the training runner whose device, backend, precision and recompile policy the
    evaluation shares; an `eager`-marked ``eval_fn`` runs eagerly whatever its backend.
    """

    def __init__(self, eval_fn: Callable[[Any, Any], Any], like: CompiledStep) -> None:
        if not callable(eval_fn):
            raise TypeError(f"eval_fn: expected a callable eval_fn(state, batch) -> metrics, "
                            f"got {type(eval_fn).__name__}.")
        # compile="auto" training compiles its evaluation the same way (in the background)
        eval_fn, compile = _unmark(eval_fn, "auto" if getattr(like, "background", None)
                                   else like.backend)
        self.runner = runner_for(eval_fn, compile=compile, device=like.device,
                                 donate=False, on_recompile=like.on_recompile,
                                 precision=like.policy, train=False, devices=like.devices)
        if self.runner.background is not None and getattr(like, "background", None):
            self.runner.background.go_after(like.background)  # its compile goes first
        self.window: MetricWindow | None = None  # kept across evaluations (fixed addresses)

    def __call__(self, state: Any, loader: Iterable[Any],
                 reduce: Callable[[Any], Any] | None = None) -> dict[str, float]:
        window = self.window.reset() if self.window is not None else None
        n = 0
        for batch in loader:
            state, window = self.runner.run(state, batch, window)
            n += 1
        if n == 0:
            raise ValueError("eval_loader is empty: it yielded no batches.")
        self.window = window
        return window.compute(reduce)


def evaluate(
    eval_fn: Callable[[Any, Any], Any],
    state: Any,
    loader: Iterable[Any],
    *,
    device: str | torch.device = "auto",
    compile: str | bool = "auto",
    precision: Any = "32",
    devices: int | str | None = None,
) -> dict[str, float]:
    """Run ``eval_fn(state, batch) -> metrics`` over ``loader``; return the metrics' values.

    Metrics accumulate on the device (a bare 0-d tensor is a mean over batches; use
    ``functrain.metrics.Mean.from_value(v, weight=batch_size)`` or ``Accuracy`` for exact
    per-example averages) and are read once at the end. ``state`` is not consumed.

    Args:
        eval_fn: the evaluation step.
        state: the state to evaluate.
        loader: an iterable of batches.
        device: where to run (see `functrain.compile_step`).
        compile: the backend (see `functrain.compile_step`); an `eager`-marked ``eval_fn``
            runs eagerly whatever this says.
        precision: the precision policy (see `functrain.fit`).
        devices: XLA only: split batches across all devices (see `functrain.compile_step`).

    Returns:
        ``{name: float}``.

    Example:
        >>> import torch, functrain as ft
        >>> model = torch.nn.Linear(2, 1)
        >>> torch.nn.init.zeros_(model.bias)
        Parameter containing:
        tensor([0.], requires_grad=True)
        >>> state = ft.TrainState.create(model, ft.optim.sgd(0.1))
        >>> def eval_fn(state, batch):
        ...     x, y = batch
        ...     out, _ = state.apply(x)
        ...     return {"mse": ((out - y) ** 2).mean()}
        >>> data = [(torch.zeros(4, 2), torch.zeros(4, 1))] * 3
        >>> ft.evaluate(eval_fn, state, data, compile="eager")
        {'mse': 0.0}
    """
    check_loader(loader, "loader")
    if not callable(eval_fn):
        raise TypeError(f"eval_fn: expected a callable eval_fn(state, batch) -> metrics, "
                        f"got {type(eval_fn).__name__}.")
    eval_fn, compile = _unmark(eval_fn, compile)
    runner = runner_for(eval_fn, compile=compile, device=device, donate=False,
                        precision=precision, train=False, devices=devices)
    window = None
    background = runner.background  # compile="auto": may its eager calls leave a core?
    if background is not None:
        background.plan(loader_len(loader))
    try:
        for batch in loader:
            state, window = runner.run(state, batch, window)
    finally:
        if background is not None:
            background.plan(None)
    if window is None:
        raise ValueError("eval_loader is empty: it yielded no batches.")
    return window.compute()
