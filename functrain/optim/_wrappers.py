"""Transformations that wrap others: `inject_hyperparams` and `apply_if_finite` (`MultiSteps`
lives in ``_accumulation.py``).

Both are branch-free: where optax uses ``lax.cond``, these compute both outcomes and pick
one with ``torch.where``, so the step compiles into one graph with no host sync.
"""

from __future__ import annotations

import functools
import inspect
import numbers
from collections.abc import Callable
from typing import Any, NamedTuple

import torch

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


def select(cond: torch.Tensor, new: Any, old: Any) -> Any:
    """``torch.where(cond, new, old)`` leaf by leaf, built on ``old`` (keeping its dict order)."""
    return _tree.map(lambda o, n: torch.where(cond, n, o), old, new)


# ---------------------------------------------------------------------------------------------
# inject_hyperparams.


class InjectHyperparamsState(NamedTuple):
    """State of `inject_hyperparams`.

    Attributes:
        count: the step count, a 0-d int64 tensor.
        hyperparams: a dict from argument name to its current value, a 0-d float tensor.
            Replace an entry (``state._replace(hyperparams={**state.hyperparams, ...})``) to
            change a hyperparameter between steps without recompiling.
        inner_state: the wrapped transformation's state.

    Example:
        >>> import torch
        >>> from functrain import optim
        >>> opt = optim.inject_hyperparams(optim.sgd)(learning_rate=0.5, momentum=0.9)
        >>> state = opt.init({"w": torch.zeros(1)})
        >>> state.count, state.hyperparams
        (tensor(0), {'learning_rate': tensor(0.5000), 'momentum': tensor(0.9000)})
    """

    count: torch.Tensor
    hyperparams: dict[str, torch.Tensor]
    inner_state: OptState


def inject_hyperparams(inner_factory: Callable[..., GradientTransformation],
                       static_args: str | tuple[str, ...] = (),
                       hyperparam_dtype: torch.dtype | None = None
                       ) -> Callable[..., GradientTransformation]:
    """Wrap an optimizer factory so that its numeric hyperparameters live in the state.

    ``inject_hyperparams(optim.adamw)(learning_rate=sched, weight_decay=0.01)`` builds a
    transformation whose state holds ``learning_rate`` and ``weight_decay`` (and every other
    numeric argument, defaults included) as 0-d tensors on the params' device. Arguments given
    as schedules are re-evaluated at every step from the state's count; numeric ones keep the
    value stored in the state, which you may replace between steps. Either way the values are
    tensors, so a compiled step never recompiles when they change.

    Bools, ``None``, dtypes, masks and arguments named in ``static_args`` are passed through
    unchanged. A callable argument is taken for a schedule unless named in ``static_args``
    (e.g. ``static_args=("mask",)`` for a mask function).

    Args:
        inner_factory: a function returning a `GradientTransformation`, e.g. `adamw`.
        static_args: names of arguments to pass through unchanged.
        hyperparam_dtype: dtype of the stored hyperparameters (``None``: torch's default
            floating dtype, float32 unless changed with ``torch.set_default_dtype``).

    Returns:
        A factory with ``inner_factory``'s signature, whose transformations have
        `InjectHyperparamsState`.

    Raises:
        TypeError: if the arguments do not fit ``inner_factory``'s signature, or (raised by
            the factory, eagerly) a hyperparameter is invalid.

    Example:
        >>> import torch
        >>> from functrain import optim
        >>> opt = optim.inject_hyperparams(optim.sgd)(learning_rate=0.1)
        >>> params = {"w": torch.ones(1)}
        >>> state = opt.init(params)
        >>> state.hyperparams["learning_rate"]
        tensor(0.1000)
        >>> state = state._replace(hyperparams={"learning_rate": torch.tensor(0.5)})
        >>> opt.update({"w": torch.ones(1)}, state)[0]
        {'w': tensor([-0.5000])}
    """
    if isinstance(static_args, str):
        static_args = (static_args,)
    signature = inspect.signature(inner_factory)
    _checks.dtype_or_none("hyperparam_dtype", hyperparam_dtype)

    @functools.wraps(inner_factory)
    def wrapped_factory(*args: Any, **kwargs: Any) -> GradientTransformation:
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        other, numeric, schedules = {}, {}, {}
        for name, value in bound.arguments.items():
            if name in static_args or isinstance(value, bool):
                other[name] = value
            elif isinstance(value, torch.Tensor) and value.ndim == 0 or (
                    isinstance(value, numbers.Real)):
                numeric[name] = value
            elif callable(value) and not isinstance(value, torch.Tensor):
                schedules[name] = value
            else:
                other[name] = value

        def as_hyperparam(value: Any, device: torch.device) -> torch.Tensor:
            dtype = hyperparam_dtype or torch.get_default_dtype()
            if isinstance(value, torch.Tensor):
                return value.to(device=device, dtype=dtype)
            return torch.tensor(value, dtype=dtype, device=device)

        # Check the arguments now, with the schedules evaluated at step 0 (on the CPU).
        count0 = torch.zeros((), dtype=torch.int64)
        checked = inner_factory(
            **other, **numeric,
            **{k: as_hyperparam(s(count0), count0.device) for k, s in schedules.items()})
        takes_extra = takes_extra_args(checked)

        names = set(numeric) | set(schedules)

        def hyperparams_at(count: torch.Tensor, stored: dict[str, torch.Tensor]) -> dict:
            if set(stored) != names:
                raise ValueError(
                    f"state.hyperparams: expected keys {sorted(names)}, got {sorted(stored)}. "
                    "HINT: replace values, keep every key: "
                    "state._replace(hyperparams={**state.hyperparams, 'learning_rate': lr}).")
            values = dict(stored)
            values.update({k: as_hyperparam(s(count), count.device) for k, s in schedules.items()})
            return values

        def init_fn(params: Params) -> InjectHyperparamsState:
            device = device_of(params)
            count = zero_count(params)
            hyperparams = {k: as_hyperparam(v, device) for k, v in numeric.items()}
            hyperparams.update({k: as_hyperparam(s(count), device) for k, s in schedules.items()})
            inner_state = inner_factory(**other, **hyperparams).init(params)
            return InjectHyperparamsState(count, hyperparams, inner_state)

        def update_fn(updates: Updates, state: InjectHyperparamsState,
                      params: Params | None = None, **extra_args: Any):
            hyperparams = hyperparams_at(state.count, state.hyperparams)
            inner = inner_factory(**other, **hyperparams)
            updates, inner_state = call_update(inner, takes_extra, updates,
                                               state.inner_state, params, extra_args)
            return updates, InjectHyperparamsState(state.count + 1, hyperparams, inner_state)

        return GradientTransformation(init_fn, update_fn)

    return wrapped_factory


# ---------------------------------------------------------------------------------------------
# apply_if_finite.


class ApplyIfFiniteState(NamedTuple):
    """State of `apply_if_finite`.

    Attributes:
        notfinite_count: consecutive steps with a non-finite update so far (0-d int64).
        last_finite: whether the last update was finite (0-d bool).
        total_notfinite: all steps with a non-finite update so far (0-d int64).
        inner_state: the wrapped transformation's state.

    Example:
        >>> import torch
        >>> from functrain import optim
        >>> state = optim.apply_if_finite(optim.sgd(0.1), 3).init({"w": torch.zeros(1)})
        >>> state.notfinite_count, state.last_finite, state.total_notfinite
        (tensor(0), tensor(True), tensor(0))
    """

    notfinite_count: torch.Tensor
    last_finite: torch.Tensor
    total_notfinite: torch.Tensor
    inner_state: OptState


def _all_finite(updates: Updates) -> torch.Tensor:
    flags = [torch.isfinite(x).all() for x in _tree.leaves(updates)]
    if not flags:
        return torch.ones((), dtype=torch.bool, device=device_of(updates))
    return torch.stack(flags).all()


def apply_if_finite(inner: GradientTransformation,
                    max_consecutive_errors: int) -> GradientTransformation:
    """Skip steps whose updates contain inf or NaN: return zeros and keep the inner state.

    Useful with mixed precision, where an occasional overflow should cost one step, not the run.
    After more than ``max_consecutive_errors`` non-finite steps in a row the update is applied
    anyway (letting the NaNs through, so that a diverged run shows up). Branch-free: the inner
    update is always computed and discarded with ``torch.where``.

    Args:
        inner: the transformation to protect.
        max_consecutive_errors: how many non-finite steps in a row to skip, >= 0.

    Returns:
        A `GradientTransformation` with `ApplyIfFiniteState`.

    Raises:
        ValueError: if ``max_consecutive_errors`` is not a non-negative int.

    Example:
        >>> import torch
        >>> from functrain import optim
        >>> opt = optim.apply_if_finite(optim.sgd(1.0), max_consecutive_errors=5)
        >>> params = {"w": torch.ones(1)}
        >>> updates, state = opt.update({"w": torch.tensor([float("inf")])}, opt.init(params))
        >>> updates["w"], state.total_notfinite
        (tensor([0.]), tensor(1))
    """
    if (not isinstance(max_consecutive_errors, int) or isinstance(max_consecutive_errors, bool)
            or max_consecutive_errors < 0):
        raise ValueError(f"max_consecutive_errors: expected a non-negative int, got "
                         f"{_checks.describe(max_consecutive_errors)}.")

    def init_fn(params: Params) -> ApplyIfFiniteState:
        # Distinct tensors: aliased inputs would add a guard to a compiled step.
        return ApplyIfFiniteState(
            notfinite_count=zero_count(params),
            last_finite=torch.ones((), dtype=torch.bool, device=device_of(params)),
            total_notfinite=zero_count(params), inner_state=inner.init(params))

    takes_extra = takes_extra_args(inner)

    def update_fn(updates: Updates, state: ApplyIfFiniteState, params: Params | None = None,
                  **extra_args: Any):
        _checks.update_inputs(updates, params)
        finite = _all_finite(updates)
        notfinite_count = torch.where(finite, 0, state.notfinite_count + 1)
        apply = finite | (notfinite_count > max_consecutive_errors)
        new_updates, inner_state = call_update(inner, takes_extra, updates, state.inner_state,
                                               params, extra_args)
        new_state = ApplyIfFiniteState(
            notfinite_count=notfinite_count,
            last_finite=finite,
            total_notfinite=torch.where(finite, state.total_notfinite,
                                        state.total_notfinite + 1),
            inner_state=select(apply, inner_state, state.inner_state))
        return _tree.map(lambda u: torch.where(apply, u, 0.0), new_updates), new_state

    return GradientTransformation(init_fn, update_fn)
