"""Mixed precision and numerical safety: policies, loss scaling, skipping non-finite steps.

A `Policy` says which dtype the params live in and which the forward computes in
(``Policy.from_name("bf16-mixed")``, ``"16-mixed"``, ``"bf16-true"``, ``"32"``). With float16
compute, gradients need loss scaling: a `DynamicLossScale` rides in the train state
(``state.extras["loss_scale"]``), and two helpers write the step for you:

* `value_and_grad` scales the loss before differentiating and unscales the gradients after,
  so what you get back is the true loss and the true gradients;
* `apply_gradients` checks that the gradients are finite, runs the optimizer, and, branch-free,
  keeps the old params and optimizer state if they were not, counting the skipped step and
  adjusting the scale (`torch.amp.GradScaler`'s rule, to the bit).

A step written with them runs unchanged under every policy: without a loss scale in the state
(`NoOpLossScale`) they reduce to ``torch.func`` and ``state.apply_gradients``.

Gradient clipping composes: the gradients reaching ``tx`` are already unscaled, so put
``optim.clip_by_global_norm`` first in the chain and it clips the true norm (GradScaler's
"unscale, then clip"). On a skipped step the clipped NaN update is simply discarded.

Skipped steps: the optimizer step is skipped (params and ``opt_state`` stay bit-identical, so
Adam's bias correction and the optimizer's schedules do not advance, as with GradScaler and
``torch.optim``), but ``state.step`` still advances (as flax's TrainState and Lightning's
``global_step`` do): it counts steps taken, keeping it in line with ``fit``'s counter, logs and
checkpoints; ``state.extras["loss_scale"].skipped_steps`` counts the skipped ones. Buffers passed
as ``buffers=...`` (BatchNorm statistics) are updated either way: the forward did run.

Example:
    A complete float16 step, trained here by hand on the CPU. ``fit`` and ``compile_step``
    with ``precision="16-mixed"`` do the ``prepare_state`` and ``wrap_step`` lines themselves:

    >>> import torch, functrain as ft
    >>> from functrain import precision as mp
    >>> model = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.ReLU(), torch.nn.Linear(16, 1))
    >>> tx = ft.optim.chain(ft.optim.clip_by_global_norm(1.0), ft.optim.adamw(1e-2))
    >>> policy = mp.Policy.from_name("16-mixed")
    >>> state = policy.prepare_state(ft.TrainState.create(model, tx))  # + DynamicLossScale
    >>> def step(state, batch):
    ...     x, y = batch
    ...     def loss_fn(params):
    ...         out, _ = ft.call(model, params, state.buffers, x)
    ...         return ((out.float() - y) ** 2).mean()
    ...     loss, grads = mp.value_and_grad(loss_fn)(
    ...         state.params, loss_scale=mp.get_loss_scale(state))
    ...     state = mp.apply_gradients(state, grads)
    ...     return state, {"loss": loss, "loss_scale": mp.get_loss_scale(state).loss_scale}
    >>> step = policy.wrap_step(step, "cpu")  # cast the batch, enter autocast
    >>> batch = (torch.randn(32, 4), torch.randn(32, 1))
    >>> for _ in range(3):
    ...     state, metrics = step(state, batch)
    >>> state.params["0.weight"].dtype, int(state.step), metrics["loss_scale"]
    (torch.float32, 3, tensor(65536.))
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from . import tree as _tree
from ._precision_policy import Policy as Policy
from ._precision_scale import DynamicLossScale as DynamicLossScale
from ._precision_scale import NoOpLossScale as NoOpLossScale
from ._precision_scale import all_finite as all_finite

__all__ = [
    "DynamicLossScale",
    "NoOpLossScale",
    "Policy",
    "all_finite",
    "apply_gradients",
    "get_loss_scale",
    "value_and_grad",
]

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
                        f"NoOpLossScale, got {type(ls).__name__}.")
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
        raise TypeError(f"fun: expected a callable loss function, got {type(fun).__name__}.")

    def wrapped(*args: Any, loss_scale: _LossScale | None = None, **kwargs: Any) -> Any:
        ls = NoOpLossScale() if loss_scale is None else loss_scale
        if not isinstance(ls, (DynamicLossScale, NoOpLossScale)):
            raise TypeError(f"loss_scale: expected a DynamicLossScale, NoOpLossScale or None, "
                            f"got {type(ls).__name__}.")

        def scaled(*a: Any, **k: Any) -> tuple[torch.Tensor, Any]:
            out = fun(*a, **k)
            loss = out[0] if has_aux else out
            return ls.scale(loss), out

        grads, value = torch.func.grad(scaled, argnums, has_aux=True)(*args, **kwargs)
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
