"""`reduce_on_plateau`: scale the updates down when a monitored value stops improving."""

from __future__ import annotations

from typing import Any, NamedTuple

import torch

from functrain import _errors
from functrain import tree as _tree

from . import _checks
from ._adam_family import scalar_dtype
from ._base import GradientTransformation, Params, Updates, device_of, zero_count


class ReduceLROnPlateauState(NamedTuple):
    """State of `reduce_on_plateau` (optax.contrib's fields): the current ``scale``, the
    ``best_value`` seen, ``plateau_count`` and ``cooldown_count``, and the running mean
    ``avg_value`` of the values of the current accumulation window (``count`` of them).

    Example:
        >>> import torch
        >>> from functrain import optim
        >>> state = optim.reduce_on_plateau().init({"w": torch.zeros(1)})
        >>> state.scale, state.best_value
        (tensor(1.), tensor(inf))
    """

    scale: torch.Tensor
    best_value: torch.Tensor
    plateau_count: torch.Tensor
    cooldown_count: torch.Tensor
    count: torch.Tensor
    avg_value: torch.Tensor


def reduce_on_plateau(factor: float = 0.1, patience: int = 10, rtol: float = 1e-4,
                      atol: float = 0.0, cooldown: int = 0, accumulation_size: int = 1,
                      min_scale: float = 0.0) -> GradientTransformation:
    """Multiply the updates by a scale that drops by ``factor`` after ``patience`` windows
    without improvement of a monitored value (``torch.optim.lr_scheduler.ReduceLROnPlateau``'s
    idea, as a transformation).

    Functional: the value arrives with the update, ``opt.update(grads, state, params,
    value=loss)`` (`chain`, `MultiSteps` and the other wrappers pass it on), and lives in the
    state, so nothing is read on the host and the step compiles. Each call adds ``value`` to
    the running mean of the current window; every ``accumulation_size`` calls that mean is
    compared with the best so far (improved if below ``(1 - rtol) * best - atol``). Chain it
    after the optimizer: ``chain(adam(lr), reduce_on_plateau())``. To monitor a validation
    loss instead of the training loss, pass the last validation loss as ``value`` at every step
    and set ``accumulation_size`` to the steps between evaluations.

    Args:
        factor: the scale's multiplier on a plateau, in (0, 1).
        patience: windows without improvement before reducing, an int >= 0.
        rtol: relative improvement needed, in [0, 1].
        atol: absolute improvement needed, >= 0 (not both 0).
        cooldown: windows to wait after a reduction before counting again, >= 0.
        accumulation_size: calls averaged into one window, >= 1.
        min_scale: the smallest scale, >= 0.

    Returns:
        A `GradientTransformation` with `ReduceLROnPlateauState`; its update takes ``value``.

    Raises:
        ValueError: on out-of-range arguments, or (at update) without ``value``.

    Example:
        >>> import torch
        >>> from functrain import optim
        >>> opt = optim.reduce_on_plateau(factor=0.5, patience=1)
        >>> grads = {"w": torch.ones(1)}
        >>> state = opt.init(grads)
        >>> for loss in (1.0, 1.0, 1.0):
        ...     updates, state = opt.update(grads, state, value=torch.tensor(loss))
        >>> updates["w"], state.scale
        (tensor([0.2500]), tensor(0.2500))
    """
    _checks.number("factor", factor, low=0.0, low_open=True, high=1.0)
    _errors.check_int("patience", patience, minimum=0)
    _checks.number("rtol", rtol, low=0.0, high=1.0, high_open=False)
    _checks.non_negative("atol", atol)
    if rtol == 0.0 and atol == 0.0:
        raise ValueError("rtol, atol: expected at least one of them > 0, got both 0.")
    _errors.check_int("cooldown", cooldown, minimum=0)
    _errors.check_int("accumulation_size", accumulation_size, minimum=1)
    _checks.non_negative("min_scale", min_scale)

    def init_fn(params: Params) -> ReduceLROnPlateauState:
        dt, device = scalar_dtype(params), device_of(params)
        return ReduceLROnPlateauState(
            scale=torch.ones((), dtype=dt, device=device),
            best_value=torch.full((), float("inf"), dtype=dt, device=device),
            plateau_count=zero_count(params), cooldown_count=zero_count(params),
            count=zero_count(params), avg_value=torch.zeros((), dtype=dt, device=device))

    def update_fn(updates: Updates, state: ReduceLROnPlateauState, params: Params | None = None,
                  *, value: Any = None, **extra_args: Any):
        del params, extra_args
        if value is None:
            raise ValueError("reduce_on_plateau: expected the monitored value as value=..., got "
                             "None. HINT: opt.update(grads, state, params, value=loss).")
        count = state.count + 1
        value = torch.as_tensor(value, device=state.avg_value.device).to(state.avg_value.dtype)
        avg = (state.count * state.avg_value + value) / count
        window_done = count == accumulation_size
        improved = avg < (1 - rtol) * state.best_value - atol
        best = torch.where(improved, avg, state.best_value)
        plateau = torch.where(improved, 0, state.plateau_count + 1)
        in_cooldown = state.cooldown_count > 0
        hit = plateau == patience
        new_plateau = torch.where(in_cooldown, 0, torch.where(hit, 0, plateau))
        new_scale = torch.where(in_cooldown, state.scale, torch.clamp(
            torch.where(hit, state.scale * factor, state.scale), min=min_scale))
        new_cooldown = torch.where(in_cooldown, state.cooldown_count - 1,
                                   torch.where(hit, cooldown, 0))
        new_state = ReduceLROnPlateauState(
            scale=torch.where(window_done, new_scale, state.scale),
            best_value=torch.where(window_done, best, state.best_value),
            plateau_count=torch.where(window_done, new_plateau, state.plateau_count),
            cooldown_count=torch.where(window_done, new_cooldown, state.cooldown_count),
            count=torch.where(window_done, 0, count),
            avg_value=torch.where(window_done, 0.0, avg))
        return (_tree.map(lambda g: g * new_state.scale.to(g.dtype), updates), new_state)

    return GradientTransformation(init_fn, update_fn)
