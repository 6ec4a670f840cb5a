"""Gradient accumulation: `MultiSteps` (with optax's ``should_skip_update_fn`` predicates
`skip_not_finite` and `skip_large_updates`) and the older `apply_every`.

Branch-free: where optax uses ``lax.cond``, both outcomes are computed and one is picked with
``torch.where``, so one compiled step serves every micro-step.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import torch

from functrain import _errors
from functrain import tree as _tree

from . import _checks
from ._base import (
    GradientTransformation,
    OptState,
    Params,
    Updates,
    call_update,
    device_of,
    takes_extra_args,
    zero_count,
)
from ._wrappers import select

ShouldSkipUpdateFn = Callable[[Updates, torch.Tensor, Any], tuple[torch.Tensor, Any]]
"""``fn(updates, gradient_step, params) -> (should_skip, info)``: ``should_skip`` a 0-d bool
tensor, ``info`` a pytree of tensors kept in `MultiStepsState` ``.skip_state``."""


def skip_not_finite(updates: Updates, gradient_step: torch.Tensor,
                    params: Params | None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """A `MultiSteps` ``should_skip_update_fn``: skip micro-steps with an inf or NaN gradient.

    Args:
        updates: the micro-step's gradients.
        gradient_step: the count of real updates so far (unused).
        params: the params (unused).

    Returns:
        ``(should_skip, {"should_skip": ..., "num_not_finite": ...})``, 0-d tensors.

    Example:
        >>> import torch
        >>> from functrain import optim
        >>> skip, info = optim.skip_not_finite({"w": torch.tensor([1.0, float("nan")])},
        ...                                    torch.tensor(0), None)
        >>> skip, info["num_not_finite"]
        (tensor(True), tensor(1))
    """
    del gradient_step, params
    counts = [torch.logical_not(torch.isfinite(x)).sum() for x in _tree.leaves(updates)]
    num = torch.stack(counts).sum() if counts else zero_count(updates)
    should_skip = num > 0
    return should_skip, {"should_skip": should_skip, "num_not_finite": num}


def skip_large_updates(updates: Updates, gradient_step: torch.Tensor, params: Params | None,
                       max_squared_norm: float) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """A `MultiSteps` ``should_skip_update_fn``: skip micro-steps whose squared gradient norm is
    ``max_squared_norm`` or more (or NaN). Bind the threshold with ``functools.partial``.

    Args:
        updates: the micro-step's gradients.
        gradient_step: the count of real updates so far (unused).
        params: the params (unused).
        max_squared_norm: the largest squared global norm let through (exclusive).

    Returns:
        ``(should_skip, {"should_skip": ..., "norm_squared": ...})``, 0-d tensors.

    Example:
        >>> import functools, torch
        >>> from functrain import optim
        >>> skip = functools.partial(optim.skip_large_updates, max_squared_norm=10.0)
        >>> skip({"w": torch.tensor([3.0, 2.0])}, torch.tensor(0), None)[0]
        tensor(True)
    """
    del gradient_step, params
    squares = [(x.to(torch.promote_types(x.dtype, torch.float32)) ** 2).sum()
               for x in _tree.leaves(updates)]
    norm_sq = torch.stack(squares).sum() if squares else torch.zeros((), device=device_of(
        updates))
    should_skip = torch.logical_not(norm_sq < max_squared_norm)
    return should_skip, {"should_skip": should_skip, "norm_squared": norm_sq}


class MultiStepsState(NamedTuple):
    """State of `MultiSteps`.

    Attributes:
        mini_step: micro-steps accumulated since the last real update (0-d int64).
        gradient_step: real updates done so far (0-d int64).
        inner_opt_state: the wrapped optimizer's state.
        acc_grads: the gradients accumulated so far (their running mean by default), in the
            accumulator dtype.
        skip_state: what ``should_skip_update_fn`` returned last (``()`` without one).

    Example:
        >>> import torch
        >>> from functrain import optim
        >>> state = optim.MultiSteps(optim.sgd(0.1), 4).init({"w": torch.zeros(1)})
        >>> state.mini_step, state.gradient_step, state.acc_grads
        (tensor(0), tensor(0), {'w': tensor([0.])})
    """

    mini_step: torch.Tensor
    gradient_step: torch.Tensor
    inner_opt_state: OptState
    acc_grads: Updates
    skip_state: Any = ()


class MultiSteps:
    """Accumulate gradients over ``every_k_schedule`` micro-steps, then apply one update.

    Every call to ``update`` adds the gradients to a running mean (or sum, with
    ``use_grad_mean=False``); on the k-th call the wrapped optimizer is applied to it and its
    updates are returned, on the other calls the updates are zero and the inner state is left
    unchanged. Branch-free: the inner update is computed at every call and selected with
    ``torch.where``, so one compiled step serves all micro-steps. Keyword arguments of
    ``update`` (e.g. ``value=loss``) are passed on to the inner optimizer.

    Non-finite gradients: a micro-step whose gradient holds inf or NaN makes its window's
    accumulator non-finite. Without ``should_skip_update_fn`` the inner optimizer receives that
    accumulator at the end of the window (wrap it in `apply_if_finite` to drop that update and
    keep its state), and the accumulator restarts from exact zeros, so the next window is
    clean. optax multiplies the accumulator by ``1 - emit`` instead, and ``NaN * 0`` is NaN:
    there one bad micro-batch poisons every later window. We keep the recovering behaviour on
    purpose. With ``should_skip_update_fn=skip_not_finite`` the bad micro-step is dropped
    entirely (not counted towards k), as in optax.

    Args:
        opt: the optimizer to apply to the accumulated gradients.
        every_k_schedule: k, a positive int, or a function of the 0-d ``gradient_step`` tensor.
        use_grad_mean: accumulate the mean (True) or the sum of the gradients.
        should_skip_update_fn: ``fn(updates, gradient_step, params) -> (should_skip, info)``
            (e.g. `skip_not_finite`); a skipped micro-step changes nothing but ``skip_state``
            and returns zero updates.
        accumulator_dtype: dtype of the accumulated gradients: float32 by default (optax's
            default), ``None`` for each parameter's own dtype. The inner optimizer receives
            the accumulator cast back to the gradients' dtype.

    Example:
        >>> import torch
        >>> from functrain import optim
        >>> opt = optim.MultiSteps(optim.sgd(1.0), every_k_schedule=2)
        >>> params = {"w": torch.zeros(1)}
        >>> state = opt.init(params)
        >>> opt.has_updated(state)
        tensor(False)
        >>> for g in (1.0, 3.0):
        ...     updates, state = opt.update({"w": torch.tensor([g])}, state, params)
        ...     print(updates["w"], opt.has_updated(state))
        tensor([0.]) tensor(False)
        tensor([-2.]) tensor(True)
    """

    def __init__(self, opt: GradientTransformation,
                 every_k_schedule: int | Callable[[torch.Tensor], Any],
                 use_grad_mean: bool = True,
                 should_skip_update_fn: ShouldSkipUpdateFn | None = None,
                 accumulator_dtype: torch.dtype | None = torch.float32) -> None:
        if not callable(every_k_schedule):
            if not isinstance(every_k_schedule, int) or isinstance(every_k_schedule, bool) or (
                    every_k_schedule < 1):
                raise ValueError(f"every_k_schedule: expected a positive int or a schedule, got "
                                 f"{_checks.describe(every_k_schedule)}.")
        if should_skip_update_fn is not None and not callable(should_skip_update_fn):
            raise TypeError("should_skip_update_fn: expected a function (updates, "
                            "gradient_step, params) -> (should_skip, info), got "
                            f"{_errors.describe(should_skip_update_fn)}.")
        _checks.dtype_or_none("accumulator_dtype", accumulator_dtype)
        self.inner_opt = opt
        self.every_k_schedule = every_k_schedule
        self.use_grad_mean = use_grad_mean
        self.should_skip_update_fn = should_skip_update_fn
        self.accumulator_dtype = accumulator_dtype
        self._takes_extra = takes_extra_args(opt)

    def init(self, params: Params) -> MultiStepsState:
        """Return the initial `MultiStepsState` for ``params``."""
        _checks.float_leaves(params, "params")
        skip_state: Any = ()
        if self.should_skip_update_fn is not None:
            _, skip_state = self.should_skip_update_fn(
                _tree.map(torch.zeros_like, params), zero_count(params), params)
        # Two distinct tensors: aliased inputs would add a guard to a compiled step.
        return MultiStepsState(
            mini_step=zero_count(params), gradient_step=zero_count(params),
            inner_opt_state=self.inner_opt.init(params),
            acc_grads=_tree.map(lambda p: torch.zeros_like(p, dtype=self.accumulator_dtype),
                                params),
            skip_state=skip_state)

    def update(self, updates: Updates, state: MultiStepsState, params: Params | None = None,
               **extra_args: Any) -> tuple[Updates, MultiStepsState]:
        """Accumulate ``updates``; every k-th call, return the inner optimizer's updates."""
        _checks.update_inputs(updates, params)
        _checks.updates(updates, state.acc_grads, dtype=False, ref_name="state.acc_grads")
        k = self.every_k_schedule
        if callable(k):
            k = k(state.gradient_step)
        if self.use_grad_mean:
            n = state.mini_step + 1
            acc = _tree.map(lambda a, g: (g.to(a.dtype) - a).div_(n).add_(a),
                            state.acc_grads, updates)
        else:
            acc = _tree.map(lambda a, g: a + g.to(a.dtype), state.acc_grads, updates)
        emit = state.mini_step >= k - 1
        inner_updates, inner_state = call_update(
            self.inner_opt, self._takes_extra, _tree.map(lambda a, g: a.to(g.dtype), acc, updates),
            state.inner_opt_state, params, extra_args)
        new_state = MultiStepsState(
            mini_step=torch.where(emit, 0, state.mini_step + 1),
            gradient_step=torch.where(emit, state.gradient_step + 1, state.gradient_step),
            inner_opt_state=select(emit, inner_state, state.inner_opt_state),
            acc_grads=_tree.map(lambda a: torch.where(emit, 0.0, a), acc),
            skip_state=state.skip_state)
        new_updates = _tree.map(lambda u: torch.where(emit, u, 0.0), inner_updates)
        if self.should_skip_update_fn is None:
            return new_updates, new_state
        skip, skip_state = self.should_skip_update_fn(updates, state.gradient_step, params)
        if not (isinstance(skip, torch.Tensor) and skip.dtype == torch.bool and skip.ndim == 0):
            raise TypeError("should_skip_update_fn: expected it to return a 0-d bool tensor "
                            f"first, got {_errors.describe(skip)}.")
        kept = select(skip, state, new_state)._replace(skip_state=skip_state)
        return _tree.map(lambda u: torch.where(skip, 0.0, u), new_updates), kept

    def has_updated(self, state: MultiStepsState) -> torch.Tensor:
        """A 0-d bool tensor: did the last ``update`` apply the inner optimizer?

        False for the initial state (as in optax).
        """
        return (state.mini_step == 0) & (state.gradient_step > 0)

    def gradient_transformation(self) -> GradientTransformation:
        """This accumulator as a plain `GradientTransformation`, e.g. to use in `chain`."""
        return GradientTransformation(self.init, self.update)


class ApplyEveryState(NamedTuple):
    """State of `apply_every`: the 0-d int64 ``count`` (mod k) and the summed ``grad_acc``.

    Example:
        >>> import torch
        >>> from functrain import optim
        >>> optim.apply_every(2).init({"w": torch.zeros(1)})
        ApplyEveryState(count=tensor(0), grad_acc={'w': tensor([0.])})
    """

    count: torch.Tensor
    grad_acc: Updates


def apply_every(k: int = 1) -> GradientTransformation:
    """Sum the updates over ``k`` steps and emit the sum every k-th step (zeros otherwise).

    optax's older accumulator: unlike `MultiSteps` the inner optimizer has already run on
    every micro-step (chain this after it), so its state moves every step.

    Args:
        k: emit every k-th step, an int >= 1.

    Returns:
        A `GradientTransformation` with `ApplyEveryState`.

    Raises:
        ValueError: if ``k`` is not a positive int.

    Example:
        >>> import torch
        >>> from functrain import optim
        >>> opt = optim.apply_every(2)
        >>> state = opt.init({"w": torch.zeros(1)})
        >>> for g in (1.0, 3.0):
        ...     updates, state = opt.update({"w": torch.tensor([g])}, state)
        ...     print(updates["w"])
        tensor([0.])
        tensor([4.])
    """
    _errors.check_int("k", k, minimum=1)

    def init_fn(params: Params) -> ApplyEveryState:
        return ApplyEveryState(count=zero_count(params),
                               grad_acc=_tree.map(torch.zeros_like, params))

    def update_fn(updates: Updates, state: ApplyEveryState, params: Params | None = None):
        _checks.update_inputs(updates, params)
        c = state.count % k
        keep = c != 0
        grad_acc = _tree.map(lambda g, a: torch.where(keep, a, 0.0) + g, updates, state.grad_acc)
        emit = c == k - 1
        out = _tree.map(lambda a: torch.where(emit, a, 0.0), grad_acc)
        return out, ApplyEveryState(count=(state.count + 1) % k, grad_acc=grad_acc)

    return GradientTransformation(init_fn, update_fn)
