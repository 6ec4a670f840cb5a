"""Checks the runner makes while a step runs for the first time, and the explanations it gives.

* `no_backward`: a step that calls ``loss.backward()`` (the Lightning / plain-PyTorch habit) is
  stopped with a message that says to use ``torch.func.grad``: in functrain the params are plain
  tensors, so ``backward`` either fails with autograd's "does not require grad" or, on the
  module's own tensors, silently fills ``.grad`` fields nobody reads.
* `watch_buffers`: a step whose `functrain.call` returned updated buffers (BatchNorm's running
  statistics) but whose returned state keeps the old ones gets a warning, once.
* `checked_call`: a step's first call, run under the two checks above (on fake tensors for a
  compiled step), with its ``(state, metrics)`` return checked against the state it received.
* `explain_data_dependent`: a compiled step that needs a tensor's value on the host (``.item()``,
  ``if loss > 1:``) or an op whose output shape depends on values (``bincount``, ``nonzero``)
  gets functrain's explanation instead of a bare ``DataDependentOutputException``.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from typing import Any

import optree
import torch
from torch.overrides import TorchFunctionMode

from . import tree as _tree

__all__ = ["check_outputs", "checked_call", "explain_data_dependent", "no_backward",
           "watch_buffers"]

_BACKWARD_HINT = (
    "functrain steps are pure functions: the params are plain tensors in state.params, and "
    "gradients are a value you compute, not a side effect. HINT: replace\n"
    "    loss = loss_fn(state.params); loss.backward(); optimizer.step()\n"
    "with\n"
    "    grads, loss = torch.func.grad_and_value(loss_fn)(state.params)\n"
    "    state = state.apply_gradients(grads)\n"
    "where loss_fn(params) runs the model with functrain.call(model, params, state.buffers, x)."
)


class _NoBackward(TorchFunctionMode):
    """Raise on ``Tensor.backward`` / ``torch.autograd.backward`` inside the step."""

    def __torch_function__(self, func: Any, types: Any, args: Any = (),
                           kwargs: Any = None) -> Any:
        if func is torch.Tensor.backward or func is torch.autograd.backward:
            raise RuntimeError(f"step_fn called loss.backward(). {_BACKWARD_HINT}")
        return func(*args, **(kwargs or {}))


def no_backward() -> contextlib.AbstractContextManager:
    """A context in which ``loss.backward()`` raises functrain's explanation.

    Used around a step's first run (eager, or the fake-tensor check before compiling); it costs
    a Python call per torch function, so it is never on the hot path.

    Example:
        >>> import torch
        >>> w = torch.ones(2, requires_grad=True)
        >>> with no_backward():  # doctest: +ELLIPSIS
        ...     (w * 2).sum().backward()
        Traceback (most recent call last):
        ...
        RuntimeError: step_fn called loss.backward(). functrain steps are pure functions: ...
    """
    return _NoBackward()


@contextlib.contextmanager
def watch_buffers() -> Iterator[list[Any]]:
    """Record ``(buffers given, buffers returned)`` of every `functrain.call` inside the block;
    yield the record, for `check_buffers` with the step's input and returned states.
    """
    from . import _bridge

    record: list[Any] = []
    previous = _bridge._CALLS
    _bridge._CALLS = record
    try:
        yield record
    finally:
        _bridge._CALLS = previous


def check_buffers(record: list[tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]],
                  state: Any, new_state: Any) -> str | None:
    """The warning text when a call in ``record`` updated some of ``state.buffers`` in place
    (their copies' version counters moved) and ``new_state.buffers`` still holds the old
    tensors; ``None`` otherwise."""
    old = getattr(state, "buffers", None)
    new = getattr(new_state, "buffers", None)
    if not isinstance(old, dict) or not isinstance(new, dict) or not old:
        return None
    updated: list[str] = []
    for given, returned in record:
        if given is not old:
            continue
        updated += [k for k, v in returned.items() if isinstance(v, torch.Tensor)
                    and v._version > 0 and k not in updated]
    kept = [k for k in updated if k in new and new[k] is old[k]]
    if not kept:
        return None
    names = ", ".join(repr(k) for k in kept[:4]) + (" ..." if len(kept) > 4 else "")
    return (f"functrain: the step's functrain.call updated buffers ({names}: e.g. BatchNorm "
            "running statistics) but the state it returned keeps the old ones, so they never "
            "change. HINT: return the new buffers, e.g. out, new_buffers = "
            "functrain.call(model, params, state.buffers, x) (as has_aux of torch.func.grad) "
            "and state.apply_gradients(grads, buffers=new_buffers).")


def warn_dropped_buffers(record: list[Any], state: Any, new_state: Any,
                         stacklevel: int = 3) -> None:
    """Warn (a ``UserWarning``) if `check_buffers` finds dropped buffer updates."""
    msg = check_buffers(record, state, new_state)
    if msg:
        warnings.warn(msg, stacklevel=stacklevel)


def check_outputs(state: Any, out: Any) -> tuple[Any, Any]:
    """The step's ``(new_state, metrics)``, checked against the ``state`` it received: a pair,
    and a state with the same tree, shapes and dtypes (else an error naming the leaf path)."""
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
    return new_state, step_metrics


def checked_call(step_fn: Any, state: Any, batch: Any, *, fake_mode: Any = None,
                 where: str = "step_fn", stacklevel: int = 3) -> tuple[Any, Any]:
    """Run a step's first call under the checks: ``-> (new_state, metrics)``.

    ``loss.backward()`` is stopped (`no_backward`), dropped buffer updates warn
    (`watch_buffers`), and the return is checked with `check_outputs`. With ``fake_mode`` (a
    ``FakeTensorMode``) the step runs on fake copies of the state's and batch's tensors: no
    compute, no memory; a data-dependent op then fails with `explain_data_dependent`'s
    explanation. Real tensors the step closes over (class weights, masks) are allowed in.
    """
    run_state, run_batch = state, batch
    if fake_mode is not None:
        def fake(x: Any) -> Any:
            return fake_mode.from_tensor(x) if isinstance(x, torch.Tensor) else x

        run_state = optree.tree_map(fake, state, namespace=_tree.NAMESPACE)
        run_batch = optree.tree_map(fake, batch, namespace=_tree.NAMESPACE)
    with watch_buffers() as calls, no_backward():
        if fake_mode is None:
            out = step_fn(run_state, run_batch)
        else:
            try:
                with fake_mode:
                    out = step_fn(run_state, run_batch)
            except Exception as e:
                explained = explain_data_dependent(e, where)
                if explained is None:
                    raise
                raise explained from e
    new_state, step_metrics = check_outputs(state, out)
    warn_dropped_buffers(calls, run_state, new_state, stacklevel=stacklevel + 1)
    return new_state, step_metrics


_ADVICE = (
    "HINT: to debug, run the step with compile='eager' (plain Python on real tensors: print, "
    "pdb and .item() work). To keep the step compiled: move the computation out of the step "
    "(compute it from the metrics fit returns or logs), compute it in an evaluation that runs "
    "eagerly (fit(..., eval_fn=ft.eager(eval_fn)): training stays compiled), or express it "
    "as a functrain.metrics value (Accuracy, Mean, Sum...), which accumulates on the device "
    "and is read once per log window."
)


def _op_name(e: BaseException) -> str | None:
    func = getattr(e, "func", None)
    if func is not None:
        return str(func)
    return None


def explain_data_dependent(e: BaseException, where: str = "step_fn") -> BaseException | None:
    """functrain's explanation of a data-dependent op in a compiled step, or ``None`` when
    ``e`` is not one.

    Recognises fake-tensor ``DataDependentOutputException`` (``.item()``, ``bool(t)``,
    ``float(t)``) and ``DynamicOutputShapeException`` (``bincount``, ``nonzero``, boolean
    masks), and Dynamo's errors about data-dependent control flow. The returned exception names
    the op, says why it cannot be compiled as one graph, and what to do.

    Example:
        >>> import torch
        >>> from torch._subclasses.fake_tensor import FakeTensorMode
        >>> try:
        ...     with FakeTensorMode():
        ...         torch.ones(3).sum().item()
        ... except Exception as e:
        ...     print(str(explain_data_dependent(e))[:74])
        step_fn: .item() (aten._local_scalar_dense.default) reads a tensor's value
    """
    from torch._subclasses import fake_tensor

    op = _op_name(e)
    if isinstance(e, fake_tensor.DataDependentOutputException) or (
            op is not None and "_local_scalar_dense" in op):
        what = (".item()" if op and "_local_scalar_dense" in op else op) or "an op"
        shown = f"{what} ({op})" if op and what != op else what
        return RuntimeError(
            f"{where}: {shown} reads a tensor's value on the host, which a compiled step "
            "cannot do: functrain traces the step once (on fake tensors, which have shapes "
            "but no values) into one graph that runs on the device without stopping. Python "
            "`if`/`float()`/`print` of a tensor's value, .item() and .tolist() need the value. "
            + _ADVICE)
    if isinstance(e, fake_tensor.DynamicOutputShapeException):
        return RuntimeError(
            f"{where}: {op or 'an op'} returns a tensor whose shape depends on the input "
            "values (like torch.bincount, torch.nonzero, torch.unique or x[mask]), which a "
            "compiled step cannot hold: functrain traces the step once, with fixed shapes. "
            "Stateful and functional torchmetrics metrics use such ops. " + _ADVICE)
    text = str(e)
    if type(e).__module__.startswith("torch._dynamo") and (
            "data-dependent" in text or "data dependent" in text
            or "Data-dependent" in text or "_local_scalar_dense" in text):
        first = text.strip().splitlines()[0] if text.strip() else type(e).__name__
        return RuntimeError(
            f"{where}: the compiler met data-dependent code ({first[:200]}): a value that is "
            "only known when the step runs decides what the graph does. " + _ADVICE)
    return None
