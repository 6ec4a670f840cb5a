"""Loss-scaled gradients: `value_and_grad` that scales the loss, `apply_gradients` that skips."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from .. import tree as _tree
from .._errors import describe
from .._grad import grad_and_value
from ._scale import DynamicLossScale, NoOpLossScale, all_finite

_LossScale = DynamicLossScale | NoOpLossScale


def get_loss_scale(state: Any) -> DynamicLossScale | NoOpLossScale:
    """Return ``state.extras["loss_scale"]``, or a `NoOpLossScale` if there is none.

    Raises:
        TypeError: if ``extras["loss_scale"]`` holds something else.

    Example:
        >>> import torch, functrain as ft
        >>> from functrain import precision as mp
        >>> state = ft.TrainState.create(torch.nn.Linear(2, 1), ft.optim.sgd(0.1))
        >>> mp.get_loss_scale(state)
        NoOpLossScale()
        >>> state = ft.TrainState.create(torch.nn.Linear(2, 1), ft.optim.sgd(0.1),
        ...                              loss_scale=mp.DynamicLossScale())
        >>> mp.get_loss_scale(state).loss_scale
        tensor(65536.)
    """
    extras = getattr(state, "extras", None)
    ls = extras.get("loss_scale") if isinstance(extras, dict) else None
    if ls is None:
        return NoOpLossScale()
    if not isinstance(ls, (DynamicLossScale, NoOpLossScale)):
        raise TypeError(f"state.extras['loss_scale']: expected a DynamicLossScale or "
                        f"NoOpLossScale, got {describe(ls)}.")
    return ls


def value_and_grad(fun: Callable[..., Any], argnums: int | tuple[int, ...] = 0,
                   has_aux: bool = False) -> Callable[..., tuple[Any, Any]]:
    """Like ``jax.value_and_grad`` (``torch.func.grad``), with loss scaling in between.

    The returned function takes ``fun``'s arguments plus a keyword ``loss_scale`` (a
    `DynamicLossScale`, a `NoOpLossScale`, or ``None`` for none). It differentiates
    ``loss_scale.scale(fun(...))`` and returns ``(value, grads)`` with ``value`` the unscaled
    loss (``(loss, aux)`` with ``has_aux``) and ``grads`` unscaled, in the params' dtypes. The
    grads may hold inf/NaN (an overflow); `apply_gradients` deals with that.

    Args:
        fun: the loss function; returns a 0-d tensor (or ``(loss, aux)`` with ``has_aux``).
        argnums: which positional argument(s) to differentiate (as ``torch.func.grad``).
        has_aux: ``fun`` returns ``(loss, aux)``.

    Returns:
        ``f(*args, loss_scale=None, **kwargs) -> (value, grads)``.

    Example:
        >>> import torch
        >>> from functrain import precision as mp
        >>> def loss_fn(params, x):
        ...     return (params["w"] * x).sum()
        >>> f = mp.value_and_grad(loss_fn)
        >>> f({"w": torch.ones(2)}, torch.tensor([1.0, 2.0]), loss_scale=mp.DynamicLossScale())
        (tensor(3.), {'w': tensor([1., 2.])})
    """
    if not callable(fun):
        raise TypeError(f"fun: expected a callable loss function, got {describe(fun)}.")

    def wrapped(*args: Any, loss_scale: _LossScale | None = None, **kwargs: Any) -> Any:
        ls = NoOpLossScale() if loss_scale is None else loss_scale
        if not isinstance(ls, (DynamicLossScale, NoOpLossScale)):
            raise TypeError(f"loss_scale: expected a DynamicLossScale, NoOpLossScale or None, "
                            f"got {describe(ls)}.")

        def scaled(*a: Any, **k: Any) -> tuple[torch.Tensor, Any]:
            out = fun(*a, **k)
            loss = out[0] if has_aux else out
            return ls.scale(loss), out

        # functrain's grad_and_value: torch.func's, on plain autograd when run eagerly
        grads, (_, value) = grad_and_value(scaled, argnums, has_aux=True)(*args, **kwargs)
        return value, ls.unscale(grads)

    return wrapped


def apply_gradients(state: Any, grads: dict[str, torch.Tensor], **changes: Any) -> Any:
    """``state.apply_gradients(grads, **changes)``, skipping the update if ``grads`` has an inf
    or NaN, and adjusting the loss scale.

    With a `DynamicLossScale` in ``state.extras["loss_scale"]``: computes
    ``finite = all_finite(grads)``, runs the optimizer, keeps the new params and ``opt_state``
    where ``finite`` and the old ones (bit-identical) where not (``torch.where``, no branch,
    no host sync), and stores ``loss_scale.adjust(finite)``. ``step`` advances and ``changes``
    apply either way. Without one (`NoOpLossScale`) this is ``state.apply_gradients``.

    The optimizer runs with autocast disabled, so a step wrapped in autocast (``-mixed``
    policies) updates in the params' dtype.

    Data parallel: when ``state.tx`` averages the gradients across ranks
    (`functrain.distributed.data_parallel`, as `functrain.fit` sets up on several ranks), it
    also has an ``agree_finite(finite)`` method; the flag goes through it, so a step is skipped
    on every rank as soon as one rank's gradients are not finite, and the loss scales agree.

    Args:
        state: a `functrain.TrainState`.
        grads: unscaled gradients (from `value_and_grad`), shaped like ``state.params``.
        **changes: other fields to replace, e.g. ``buffers=new_buffers``.

    Returns:
        The new state.

    Example:
        >>> import torch, functrain as ft
        >>> from functrain import precision as mp
        >>> state = ft.TrainState.create(torch.nn.Linear(2, 1), ft.optim.sgd(0.1),
        ...                              loss_scale=mp.DynamicLossScale(init_scale=1024.0))
        >>> bad = ft.tree.map(lambda p: torch.full_like(p, float("nan")), state.params)
        >>> new = mp.apply_gradients(state, bad)
        >>> torch.equal(new.params["weight"], state.params["weight"]), int(new.step)
        (True, 1)
        >>> ls = mp.get_loss_scale(new)
        >>> ls.loss_scale, ls.skipped_steps
        (tensor(512.), tensor(1))
    """
    ls = get_loss_scale(state)
    with _no_autocast(grads):
        new = state.apply_gradients(grads, **changes)
    if isinstance(ls, NoOpLossScale):
        return new
    finite = all_finite(grads)
    agree = getattr(getattr(state, "tx", None), "agree_finite", None)
    if agree is not None:  # gradients averaged across ranks: every rank skips alike
        finite = agree(finite)
    extras = dict(new.extras)
    extras["loss_scale"] = ls.adjust(finite)
    return new.replace(params=_select(finite, new.params, state.params),
                       opt_state=_select(finite, new.opt_state, state.opt_state),
                       extras=extras)


def _select(cond: torch.Tensor, new: Any, old: Any) -> Any:
    """``torch.where(cond, new, old)`` leaf by leaf, on ``old``'s structure (its dict order)."""
    return _tree.map(lambda o, n: torch.where(cond, n, o) if isinstance(o, torch.Tensor) else n,
                     old, new)


def _no_autocast(tree: Any) -> Any:
    for x in _tree.leaves(tree):
        if isinstance(x, torch.Tensor):
            return torch.autocast(x.device.type, enabled=False)
    return torch.autocast("cpu", enabled=False)
