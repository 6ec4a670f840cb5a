"""Schedule-free optimization (Defazio et al., 2024), as optax.contrib has it: `schedule_free`
wraps a base optimizer; `schedule_free_sgd` and `schedule_free_adamw` are the usual pair; and
`schedule_free_eval_params` gives the params to evaluate with."""

from __future__ import annotations

from typing import Any, NamedTuple

import torch

from functrain import tree as _tree

from . import _checks
from ._adam_family import scalar_dtype
from ._adaptive import scale_by_rms
from ._alias import sgd
from ._base import (
    GradientTransformation,
    OptState,
    Params,
    ScalarOrSchedule,
    Updates,
    call_update,
    chain,
    device_of,
    takes_extra_args,
)
from ._schedules import warmup_constant_schedule
from ._transforms import _NO_PARAMS, add_decayed_weights, scale_by_learning_rate


class ScheduleFreeState(NamedTuple):
    """State of `schedule_free`: ``b1`` and the running ``weight_sum`` and ``max_lr`` (0-d),
    ``step_count`` (0-d int64, from 1), the base optimizer's state and the sequence ``z``.

    The training params are ``y``, an interpolation between ``z`` and the average ``x``: evaluate
    with ``x`` = `schedule_free_eval_params`.

    Example:
        >>> import torch
        >>> from functrain import optim
        >>> optim.schedule_free_sgd().init({"w": torch.ones(1)}).step_count
        tensor(1)
    """

    b1: torch.Tensor
    weight_sum: torch.Tensor
    step_count: torch.Tensor
    max_lr: torch.Tensor
    base_optimizer_state: OptState
    z: Params


def _find_state(state: Any) -> ScheduleFreeState | None:
    if isinstance(state, ScheduleFreeState):
        return state
    if isinstance(state, (tuple, list)):
        for s in state:
            found = _find_state(s)
            if found is not None:
                return found
    if isinstance(state, dict):
        for s in state.values():
            found = _find_state(s)
            if found is not None:
                return found
    return None


def schedule_free_eval_params(state: OptState, params: Params) -> Params:
    """The params to evaluate (and export) with: the average ``x = (y - (1 - b1) z) / b1``.

    Train with ``params`` (``y``); call this for validation, checkpoints for inference and the
    final model. Pure: nothing is changed. ``state`` may be the `ScheduleFreeState` or any
    optimizer state containing one (e.g. inside a `chain` or `inject_hyperparams`).

    Args:
        state: the optimizer state.
        params: the current (training) params.

    Returns:
        The evaluation params, same structure and dtypes as ``params``.

    Raises:
        ValueError: if ``state`` holds no `ScheduleFreeState`.

    Example:
        >>> import torch
        >>> from functrain import optim
        >>> opt = optim.schedule_free_sgd(learning_rate=0.1)
        >>> params = {"w": torch.tensor([1.0])}
        >>> state = opt.init(params)
        >>> for _ in range(3):
        ...     updates, state = opt.update({"w": torch.tensor([1.0])}, state, params)
        ...     params = optim.apply_updates(params, updates)
        >>> optim.schedule_free_eval_params(state, params)["w"]
        tensor([0.8000])
    """
    sf = _find_state(state)
    if sf is None:
        raise ValueError("schedule_free_eval_params: state: expected a ScheduleFreeState (or a "
                         "state holding one), found none. HINT: pass the state of "
                         "schedule_free(...), schedule_free_sgd(...) or schedule_free_adamw(...).")
    return _tree.map(lambda y, z: ((y - (1.0 - sf.b1) * z) / sf.b1).to(y.dtype), params, sf.z)


def schedule_free(base_optimizer: GradientTransformation, learning_rate: ScalarOrSchedule,
                  b1: float = 0.9, weight_lr_power: float = 2.0,
                  state_dtype: torch.dtype | None = None) -> GradientTransformation:
    """Turn ``base_optimizer`` into its schedule-free version: no decay schedule needed.

    The base optimizer steps the sequence ``z``; ``x`` is a running average of ``z`` weighted by
    ``max_lr ** weight_lr_power``; the returned updates move the params to ``y = b1 * x +
    (1 - b1) * z``, where gradients are taken. Evaluate at ``x``: `schedule_free_eval_params`.
    ``learning_rate`` must be the one the base optimizer uses (it sets the weights).

    Args:
        base_optimizer: the optimizer of ``z`` (e.g. `sgd`; see `schedule_free_adamw`).
        learning_rate: the base optimizer's learning rate (a number or a schedule, e.g. a
            warm-up).
        b1: the interpolation (momentum) coefficient, in (0, 1).
        weight_lr_power: the power of the learning rate in the averaging weights.
        state_dtype: dtype of ``z`` (``None``: the params').

    Returns:
        A `GradientTransformation` with `ScheduleFreeState`; it needs ``params`` at update.

    Example:
        >>> import torch
        >>> from functrain import optim
        >>> opt = optim.schedule_free(optim.sgd(0.1), learning_rate=0.1)
        >>> params = {"w": torch.tensor([1.0])}
        >>> updates, state = opt.update({"w": torch.tensor([1.0])}, opt.init(params), params)
        >>> updates["w"]  # the first step moves y all the way to z
        tensor([-0.1000])
    """
    _checks.scalar_or_schedule("learning_rate", learning_rate)
    _checks.number("b1", b1, low=0.0, low_open=True, high=1.0)
    _checks.number("weight_lr_power", weight_lr_power)
    _checks.dtype_or_none("state_dtype", state_dtype)
    takes_extra = takes_extra_args(base_optimizer)

    def init_fn(params: Params) -> ScheduleFreeState:
        _checks.float_leaves(params, "params")
        dt, device = scalar_dtype(params), device_of(params)
        return ScheduleFreeState(
            b1=torch.tensor(b1, dtype=dt, device=device),
            weight_sum=torch.zeros((), dtype=dt, device=device),
            step_count=torch.ones((), dtype=torch.int64, device=device),
            max_lr=torch.zeros((), dtype=dt, device=device),
            base_optimizer_state=base_optimizer.init(params),
            z=_tree.map(lambda p: p.to(state_dtype or p.dtype, copy=True), params))

    def update_fn(updates: Updates, state: ScheduleFreeState, params: Params | None = None,
                  **extra_args: Any):
        if params is None:
            raise ValueError(_NO_PARAMS.format(name="schedule_free"))
        _checks.update_inputs(updates, params)
        lr = learning_rate(state.step_count) if callable(learning_rate) else learning_rate
        lr = torch.as_tensor(lr, device=state.max_lr.device).to(state.max_lr.dtype)
        max_lr = torch.maximum(state.max_lr, lr)
        weight = max_lr**weight_lr_power
        total = state.weight_sum + weight
        ck = torch.where(torch.isnan(weight) | torch.isnan(total), float("nan"),
                         torch.nan_to_num(weight / total, nan=0.0, posinf=float("inf")))
        base_updates, base_state = call_update(base_optimizer, takes_extra, updates,
                                               state.base_optimizer_state, params, extra_args)
        z = _tree.map(lambda z0, u: (z0 + u).to(z0.dtype), state.z, base_updates)

        def one(y, z_old, z_new):
            prev_x = (y - (1.0 - b1) * z_old) / b1
            x = (1.0 - ck) * prev_x + ck * z_new
            new_y = b1 * x + (1.0 - b1) * z_new
            return (new_y - y).to(y.dtype)

        new_updates = _tree.map(one, params, state.z, z)
        return new_updates, ScheduleFreeState(state.b1, total, state.step_count + 1, max_lr,
                                              base_state, z)

    return GradientTransformation(init_fn, update_fn)


def schedule_free_sgd(learning_rate: float = 1.0, warmup_steps: int | None = None,
                      b1: float = 0.9, weight_decay: float | None = None,
                      weight_lr_power: float = 2.0, state_dtype: torch.dtype | None = None
                      ) -> GradientTransformation:
    """Schedule-free SGD (optax.contrib's arguments and defaults).

    Args:
        learning_rate: the peak learning rate.
        warmup_steps: linear warm-up from 0 over this many steps (``None``: none).
        b1: the interpolation coefficient, in (0, 1).
        weight_decay: L2 weight decay added to the gradient (``None``: none).
        weight_lr_power: the power of the learning rate in the averaging weights.
        state_dtype: dtype of ``z``.

    Returns:
        A `GradientTransformation` with `ScheduleFreeState`.

    Example:
        >>> import torch
        >>> from functrain import optim
        >>> opt = optim.schedule_free_sgd(learning_rate=0.1, warmup_steps=10)
        >>> params = {"w": torch.tensor([1.0])}
        >>> updates, state = opt.update({"w": torch.tensor([1.0])}, opt.init(params), params)
        >>> updates["w"]  # the warm-up starts at 0
        tensor([0.])
    """
    if warmup_steps is not None:
        learning_rate = warmup_constant_schedule(0.0, learning_rate, warmup_steps)
    optimizer = sgd(learning_rate)
    if weight_decay is not None:
        optimizer = chain(add_decayed_weights(weight_decay), optimizer)
    return schedule_free(optimizer, learning_rate, b1, weight_lr_power, state_dtype)


def schedule_free_adamw(learning_rate: float = 0.0025, warmup_steps: int | None = None,
                        b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8,
                        weight_decay: float = 0.0, weight_lr_power: float = 2.0,
                        state_dtype: torch.dtype | None = None) -> GradientTransformation:
    """Schedule-free AdamW (optax.contrib's arguments and defaults): the base optimizer is a
    bias-corrected RMS scaling (no first moment: ``b1`` is the schedule-free interpolation),
    decoupled weight decay and the learning rate.

    Evaluate with `schedule_free_eval_params`. (Facebook's ``schedulefree.AdamWScheduleFree``
    also applies weight decay at ``y``; this follows optax.)

    Args:
        learning_rate: the peak learning rate.
        warmup_steps: linear warm-up from 0 over this many steps (``None``: none).
        b1: the interpolation coefficient, in (0, 1).
        b2: decay rate of the second moment, in [0, 1).
        eps: added to the denominator.
        weight_decay: decoupled weight decay.
        weight_lr_power: the power of the learning rate in the averaging weights.
        state_dtype: dtype of ``z``.

    Returns:
        A `GradientTransformation` with `ScheduleFreeState`.

    Example:
        >>> import torch
        >>> from functrain import optim
        >>> opt = optim.schedule_free_adamw(learning_rate=0.1)
        >>> params = {"w": torch.tensor([1.0])}
        >>> updates, state = opt.update({"w": torch.tensor([3.0])}, opt.init(params), params)
        >>> updates["w"]
        tensor([-0.1000])
    """
    if warmup_steps is not None:
        learning_rate = warmup_constant_schedule(0.0, learning_rate, warmup_steps)
    optimizer = chain(scale_by_rms(decay=b2, eps=eps, eps_in_sqrt=False, bias_correction=True),
                      add_decayed_weights(weight_decay), scale_by_learning_rate(learning_rate))
    return schedule_free(optimizer, learning_rate, b1, weight_lr_power, state_dtype)
