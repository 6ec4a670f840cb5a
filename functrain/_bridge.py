"""The model bridge: an ``nn.Module`` as a pure function of ``(params, buffers, inputs)``."""

from __future__ import annotations

import contextlib
import warnings
import weakref
from typing import Any, NamedTuple

import torch
from torch import nn

from ._compat import is_functional_call_key_error
from ._errors import describe

__all__ = ["call", "split", "split_module"]

# Set by the runner while a step runs for the first time (functrain._step_checks.watch_buffers):
# every call appends (buffers given, buffers returned), to spot a step that drops new buffers.
_CALLS: list[Any] | None = None


def split_module(module: nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Take a module's parameters and buffers out as two dicts of detached copies.

    The dicts are keyed by qualified names (``"layers.0.weight"``). The tensors are copies:
    changing them never changes the module, and the module is never touched afterwards (it only
    serves as the code that `call` runs). Tied parameters appear once, under their first name.

    Args:
        module: any ``torch.nn.Module``.

    Returns:
        ``(params, buffers)``: plain tensors, ``requires_grad=False``; differentiate with
        ``torch.func.grad`` rather than autograd's ``.backward()``.

    Raises:
        TypeError: if ``module`` is not an ``nn.Module``.

    Example:
        >>> import torch, functrain as ft
        >>> params, buffers = ft.split_module(torch.nn.BatchNorm1d(3))
        >>> sorted(params), sorted(buffers)
        (['bias', 'weight'], ['num_batches_tracked', 'running_mean', 'running_var'])
    """
    if not isinstance(module, nn.Module):
        raise TypeError(f"module: expected a torch.nn.Module, got {describe(module)}.")
    params = {k: v.detach().clone() for k, v in module.named_parameters()}
    buffers = {k: v.detach().clone() for k, v in module.named_buffers()}
    return params, buffers


def split(module: nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Deprecated name of `split_module` (it clashed with `functrain.random.split`).

    Warns with `DeprecationWarning`, then returns ``split_module(module)``.

    Example:
        >>> import warnings, torch, functrain as ft
        >>> with warnings.catch_warnings(record=True) as caught:
        ...     warnings.simplefilter("always")
        ...     params, buffers = ft.split(torch.nn.Linear(2, 1))
        >>> sorted(params), caught[0].category.__name__
        (['bias', 'weight'], 'DeprecationWarning')
    """
    warnings.warn("functrain.split is deprecated: use functrain.split_module (the same "
                  "function under a name that does not clash with functrain.random.split).",
                  DeprecationWarning, stacklevel=2)
    return split_module(module)


def call(
    module: nn.Module,
    params: dict[str, torch.Tensor],
    buffers: dict[str, torch.Tensor],
    *args: Any,
    rng: torch.Tensor | None = None,
    train: bool | None = None,
    **kwargs: Any,
) -> tuple[Any, dict[str, torch.Tensor]]:
    """Run ``module`` as a pure function of ``params`` and ``buffers``.

    This is ``torch.func.functional_call`` without its impurity: the dicts you pass are never
    mutated. Buffers the module updates in place (BatchNorm's running statistics) are updated on
    copies, which come back as ``new_buffers``. Works under ``torch.func.grad``/``vmap`` and
    inside ``torch.compile(fullgraph=True)`` with no graph break (the copies then cost nothing:
    the compiler sees a functional program).

    Args:
        module: the module whose code to run (its own tensors are not used).
        params: parameters by qualified name, as from `split`.
        buffers: buffers by qualified name, as from `split`.
        *args: positional inputs of ``module.forward``.
        rng: a `functrain.random` key. When given, dropout and ``torch.rand*`` calls inside
            the module draw from it (see `functrain.random.keyed`) instead of the global
            generator, so the draws are a pure function of the key.
        train: run in training (``True``) or evaluation (``False``) mode for this call; ``None``
            keeps the module's current mode.
        **kwargs: keyword inputs of ``module.forward``.

    Returns:
        ``(output, new_buffers)``.

    Raises:
        TypeError: if ``params`` or ``buffers`` is not a dict.
        KeyError: if a parameter or buffer of the module is missing (names it).

    Example:
        >>> import torch, functrain as ft
        >>> bn = torch.nn.BatchNorm1d(2)
        >>> params, buffers = ft.split_module(bn)
        >>> y, new_buffers = ft.call(bn, params, buffers, torch.tensor([[0.0, 1.0], [2.0, 3.0]]))
        >>> buffers["running_mean"], new_buffers["running_mean"]
        (tensor([0., 0.]), tensor([0.1000, 0.2000]))
    """
    if not isinstance(params, dict):
        raise TypeError(f"params: expected a dict of tensors, got {describe(params)}.")
    if not isinstance(buffers, dict):
        raise TypeError(f"buffers: expected a dict of tensors, got {describe(buffers)}.")
    # Copies of the buffers: functional_call writes in-place buffer updates into the tensors it
    # is given, so handing it copies keeps the caller's dict untouched.
    new_buffers = {k: v.clone() for k, v in buffers.items()}
    if rng is None and (train is None or train == module.training):
        out = _run(module, params, new_buffers, args, kwargs)  # (no contexts: eager speed)
    else:
        # Plain `with` over two contexts (not an ExitStack): older Dynamo releases, such as the
        # one torch_xla 2.9 pins, cannot trace ExitStack.
        keyed: Any = contextlib.nullcontext()
        if rng is not None:
            from . import random as _random

            keyed = _random.keyed(rng)
        mode: Any = (_mode(module, train) if train is not None and train != module.training
                     else contextlib.nullcontext())
        with keyed, mode:
            out = _run(module, params, new_buffers, args, kwargs)
    if _CALLS is not None:
        _CALLS.append((buffers, new_buffers))
    return out, new_buffers


def _run(module: nn.Module, params: dict[str, torch.Tensor], buffers: dict[str, torch.Tensor],
         args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    try:
        plan = None if torch.compiler.is_compiling() else _plan(module)
        done, out = (False, None) if plan is None else _swapped_call(
            module, plan, params, buffers, args, kwargs)
        if not done:
            out = torch.func.functional_call(module, (params, buffers), args, kwargs,
                                             strict=True)
    except RuntimeError as e:
        if is_functional_call_key_error(e):
            raise KeyError(
                f"params/buffers do not match {type(module).__name__}'s tensors: {e} "
                "HINT: build them with functrain.split_module(module)."
            ) from None
        raise
    return out


@contextlib.contextmanager
def _mode(module: nn.Module, train: bool):
    previous = {m: m.training for m in module.modules()}
    module.train(train)
    try:
        yield
    finally:
        for m, was in previous.items():
            m.training = was


# -- the eager fast path of `call` ---------------------------------------------------------------
# ``torch.func.functional_call`` walks the module tree three times per call (tied weights, the
# strict key check, the swap), ~60 us on the MNIST-1D CNN's 5 modules: a twentieth of an eager
# step. Eagerly, `call` swaps the tensors into the slots of a plan made once per module and
# checked on every call against the module's current structure (a module, parameter or buffer
# added, removed or replaced makes a new plan). While compiling, and wherever the plan does not
# fit the dicts given, ``functional_call`` runs (and raises its errors).


class _Plan(NamedTuple):
    keys: frozenset[str]  # the names params and buffers must have, together
    slots: tuple[tuple[str, dict[str, Any], str], ...]  # (name, a _parameters/_buffers dict, key)
    tensors: tuple[Any, ...]  # what each slot held when the plan was made
    # per module: a weak reference to it (the plan must not keep its module alive), its two
    # dicts and their keys, and weak references to its children
    modules: tuple[tuple[Any, ...], ...]


_PLANS: weakref.WeakKeyDictionary[nn.Module, _Plan] = weakref.WeakKeyDictionary()


def _plan(module: nn.Module) -> _Plan | None:
    """The swap plan of ``module`` (cached), or None where ``functional_call`` must run.

    A cached plan is used while every module of the tree has the same children, the same
    ``_parameters``/``_buffers`` dicts with the same keys, and every slot the same tensor (so
    tied parameters are still tied); plain loops, as this runs on every eager call.
    """
    if isinstance(module, torch.jit.ScriptModule) or torch.jit.is_tracing():
        return None
    try:
        plan = _PLANS.get(module)
    except TypeError:  # a module class that made itself unhashable
        return None
    if plan is not None and _still_fits(plan):
        return plan
    first: dict[int, str] = {}  # tied tensors answer to their first name, as in split_module
    slots, tensors, modules = [], [], []
    for prefix, sub in module.named_modules(remove_duplicate=False):
        dp, db = sub._parameters, sub._buffers
        modules.append((weakref.ref(sub), dp, db, tuple(dp), tuple(db),
                        tuple(weakref.ref(c) if c is not None else None
                              for c in sub._modules.values())))
        for d in (dp, db):
            for k, t in d.items():
                if t is None:
                    continue
                name = f"{prefix}.{k}" if prefix else k
                slots.append((first.setdefault(id(t), name), d, k))
                tensors.append(t)
    plan = _Plan(frozenset(first.values()), tuple(slots), tuple(tensors), tuple(modules))
    _PLANS[module] = plan
    return plan


def _still_fits(plan: _Plan) -> bool:
    for ref, dp, db, pkeys, bkeys, children in plan.modules:
        m = ref()
        if (m is None or m._parameters is not dp or m._buffers is not db
                or tuple(dp) != pkeys or tuple(db) != bkeys
                or len(m._modules) != len(children)):
            return False
        for c, r in zip(m._modules.values(), children):
            if (c is None) != (r is None) or (r is not None and r() is not c):
                return False
    for (_, d, k), t in zip(plan.slots, plan.tensors):
        if d.get(k) is not t:
            return False
    return True


def _swapped_call(module: nn.Module, plan: _Plan, params: dict[str, Any],
                  buffers: dict[str, Any], args: tuple[Any, ...],
                  kwargs: dict[str, Any]) -> tuple[bool, Any]:
    """``(True, module(*args, **kwargs))`` run with the tensors of ``params`` and ``buffers``
    in the plan's slots (then put back), or ``(False, None)`` if their names do not fit it."""
    given = {**buffers, **params}
    if len(given) != len(params) + len(buffers) or given.keys() != plan.keys:
        return False, None
    old = [d[k] for _, d, k in plan.slots]
    try:
        for name, d, k in plan.slots:
            d[k] = given[name]
        return True, module(*args, **kwargs)
    finally:
        for (_, d, k), t in zip(plan.slots, old):
            d[k] = t
