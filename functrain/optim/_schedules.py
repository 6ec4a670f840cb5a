"""Learning-rate (and other hyperparameter) schedules: functions of the step count.

A schedule maps the step count, a 0-d int64 tensor, to a 0-d float tensor on the count's device,
in torch's default floating dtype (float32, or float64 after ``torch.set_default_dtype``: the
analogue of JAX's x64 mode). Schedules are branch-free (``torch.where``, no ``.item()``), so a
compiled step that evaluates one never recompiles as the count moves. For convenience they also
accept a Python int.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from functrain import _errors

from . import _checks
from ._base import Schedule


def _count(count: Any) -> torch.Tensor:
    return count if isinstance(count, torch.Tensor) else torch.as_tensor(count)


def _as_float(count: torch.Tensor) -> torch.Tensor:
    return count.to(torch.get_default_dtype())


def _const(value: Any, count: torch.Tensor) -> torch.Tensor:
    return torch.full((), value, dtype=torch.get_default_dtype(), device=count.device)


def _steps(name: str, value: Any) -> None:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{name}: expected an int number of steps, got {_checks.describe(value)}.")


def constant_schedule(value: float) -> Schedule:
    """A schedule that always returns ``value``.

    Args:
        value: the constant.

    Returns:
        A schedule.

    Example:
        >>> from functrain import optim
        >>> optim.constant_schedule(0.1)(100)
        tensor(0.1000)
    """
    _checks.number("value", value)
    return lambda count: _const(value, _count(count))


def polynomial_schedule(init_value: float, end_value: float, power: float,
                        transition_steps: int, transition_begin: int = 0) -> Schedule:
    """Go from ``init_value`` to ``end_value`` as ``(1 - t / transition_steps) ** power``.

    Holds ``init_value`` for the first ``transition_begin`` steps and ``end_value`` after the
    transition. A ``transition_steps`` <= 0 gives the constant ``init_value`` (as in optax).

    Args:
        init_value: the value at the start.
        end_value: the value at the end of the transition.
        power: the exponent of the polynomial.
        transition_steps: the length of the transition, in steps.
        transition_begin: steps to wait before starting.

    Returns:
        A schedule.

    Example:
        >>> from functrain import optim
        >>> sched = optim.polynomial_schedule(1.0, 0.0, power=2, transition_steps=10)
        >>> sched(5)
        tensor(0.2500)
    """
    for name, v in (("init_value", init_value), ("end_value", end_value), ("power", power)):
        _checks.number(name, v)
    _steps("transition_steps", transition_steps)
    _steps("transition_begin", transition_begin)
    if transition_steps <= 0:
        return constant_schedule(init_value)
    transition_begin = max(transition_begin, 0)

    def schedule(count: Any) -> torch.Tensor:
        count = _count(count)
        t = _as_float(torch.clamp(count - transition_begin, 0, transition_steps))
        frac = 1 - t / transition_steps
        return (init_value - end_value) * frac**power + end_value

    return schedule


def linear_schedule(init_value: float, end_value: float, transition_steps: int,
                    transition_begin: int = 0) -> Schedule:
    """Go linearly from ``init_value`` to ``end_value`` over ``transition_steps`` steps.

    Args:
        init_value: the value at the start.
        end_value: the value at the end of the transition (and after).
        transition_steps: the length of the transition, in steps.
        transition_begin: steps to hold ``init_value`` before starting.

    Returns:
        A schedule.

    Example:
        >>> from functrain import optim
        >>> sched = optim.linear_schedule(0.0, 1.0, transition_steps=4)
        >>> [round(sched(t).item(), 2) for t in range(6)]
        [0.0, 0.25, 0.5, 0.75, 1.0, 1.0]
    """
    return polynomial_schedule(init_value, end_value, 1, transition_steps, transition_begin)


def cosine_decay_schedule(init_value: float, decay_steps: int, alpha: float = 0.0,
                          exponent: float = 1.0) -> Schedule:
    """Cosine decay (Loshchilov & Hutter): from ``init_value`` to ``alpha * init_value``.

    ``init_value * ((1 - alpha) * (0.5 * (1 + cos(pi * t / decay_steps))) ** exponent + alpha)``,
    with ``t`` clipped to ``decay_steps``. Matches ``torch.optim.lr_scheduler
    .CosineAnnealingLR(T_max=decay_steps, eta_min=alpha * lr)`` over its first half-period.

    Args:
        init_value: the value at step 0.
        decay_steps: the length of the decay, in steps, > 0.
        alpha: the final value as a fraction of ``init_value``.
        exponent: the power of the cosine factor.

    Returns:
        A schedule.

    Raises:
        ValueError: if ``decay_steps`` is not positive.

    Example:
        >>> from functrain import optim
        >>> sched = optim.cosine_decay_schedule(1.0, decay_steps=10, alpha=0.1)
        >>> [round(sched(t).item(), 3) for t in (0, 5, 10, 20)]
        [1.0, 0.55, 0.1, 0.1]
    """
    for name, v in (("init_value", init_value), ("alpha", alpha), ("exponent", exponent)):
        _checks.number(name, v)
    _steps("decay_steps", decay_steps)
    if decay_steps <= 0:
        raise ValueError(f"decay_steps: expected a positive number of steps, got {decay_steps}.")

    def schedule(count: Any) -> torch.Tensor:
        t = _as_float(torch.clamp(_count(count), max=decay_steps))
        cosine = 0.5 * (1 + torch.cos(math.pi * t / decay_steps))
        return init_value * ((1 - alpha) * cosine**exponent + alpha)

    return schedule


def join_schedules(schedules: Sequence[Schedule], boundaries: Sequence[int]) -> Schedule:
    """Run ``schedules[0]`` until ``boundaries[0]``, then ``schedules[1]``, and so on.

    Each schedule after the first sees the count relative to its starting boundary.

    Args:
        schedules: the schedules, one more than the boundaries.
        boundaries: the steps at which to switch, increasing.

    Returns:
        A schedule.

    Raises:
        ValueError: if there is not exactly one more schedule than boundaries.

    Example:
        >>> from functrain import optim
        >>> sched = optim.join_schedules(
        ...     [optim.constant_schedule(1.0), optim.linear_schedule(2.0, 0.0, 4)], [3])
        >>> [round(sched(t).item(), 2) for t in range(6)]
        [1.0, 1.0, 1.0, 2.0, 1.5, 1.0]
    """
    schedules, boundaries = list(schedules), list(boundaries)
    if len(schedules) != len(boundaries) + 1:
        raise ValueError(f"schedules: expected {len(boundaries) + 1} schedules for "
                         f"{len(boundaries)} boundaries, got {len(schedules)}.")
    for i, s in enumerate(schedules):
        if not callable(s):
            raise TypeError(f"schedules[{i}]: expected a schedule (a callable of the step "
                            f"count), got {_checks.describe(s)}.")
    for i, b in enumerate(boundaries):
        _steps(f"boundaries[{i}]", b)

    def schedule(count: Any) -> torch.Tensor:
        count = _count(count)
        out = schedules[0](count)
        for boundary, s in zip(boundaries, schedules[1:], strict=True):
            out = torch.where(count < boundary, out, s(count - boundary))
        return out

    return schedule


def warmup_cosine_decay_schedule(init_value: float, peak_value: float, warmup_steps: int,
                                 decay_steps: int, end_value: float = 0.0,
                                 exponent: float = 1.0) -> Schedule:
    """Linear warm-up from ``init_value`` to ``peak_value``, then cosine decay to ``end_value``.

    ``decay_steps`` counts the whole schedule, warm-up included (as in optax), so the cosine
    part lasts ``decay_steps - warmup_steps`` steps.

    Args:
        init_value: the value at step 0.
        peak_value: the value at the end of the warm-up.
        warmup_steps: the length of the warm-up, in steps.
        decay_steps: the length of warm-up plus decay, in steps, > ``warmup_steps``.
        end_value: the value at the end (and after).
        exponent: the power of the cosine factor.

    Returns:
        A schedule.

    Example:
        >>> from functrain import optim
        >>> sched = optim.warmup_cosine_decay_schedule(0.0, 1.0, warmup_steps=2, decay_steps=6)
        >>> [round(sched(t).item(), 3) for t in range(8)]
        [0.0, 0.5, 1.0, 0.854, 0.5, 0.146, 0.0, 0.0]
    """
    _checks.number("peak_value", peak_value)
    _checks.number("end_value", end_value)
    alpha = 0.0 if peak_value == 0 else end_value / peak_value
    return join_schedules(
        [linear_schedule(init_value, peak_value, warmup_steps),
         cosine_decay_schedule(peak_value, decay_steps - warmup_steps, alpha, exponent)],
        [warmup_steps])


def exponential_decay(init_value: float, transition_steps: int, decay_rate: float,
                      transition_begin: int = 0, staircase: bool = False,
                      end_value: float | None = None) -> Schedule:
    """Exponential decay: ``init_value * decay_rate ** ((t - transition_begin) /
    transition_steps)``.

    Args:
        init_value: the value before and at ``transition_begin``.
        transition_steps: steps per factor of ``decay_rate``; <= 0 gives a constant.
        decay_rate: the factor per ``transition_steps``; 0 gives a constant (as in optax).
        transition_begin: steps to hold ``init_value`` before decaying.
        staircase: decay in whole steps of ``transition_steps`` (``floor``).
        end_value: a floor (if ``decay_rate < 1``) or ceiling (if ``> 1``) for the value.

    Returns:
        A schedule.

    Example:
        >>> from functrain import optim
        >>> sched = optim.exponential_decay(1.0, transition_steps=2, decay_rate=0.5)
        >>> [round(sched(t).item(), 3) for t in range(5)]
        [1.0, 0.707, 0.5, 0.354, 0.25]
    """
    _checks.number("init_value", init_value)
    _checks.number("decay_rate", decay_rate, low=0.0)
    _steps("transition_steps", transition_steps)
    _steps("transition_begin", transition_begin)
    if end_value is not None:
        _checks.number("end_value", end_value)
    if transition_steps <= 0 or decay_rate == 0:
        return constant_schedule(init_value)
    transition_begin = max(transition_begin, 0)

    def schedule(count: Any) -> torch.Tensor:
        count = _count(count)
        elapsed = count - transition_begin
        p = _as_float(elapsed) / transition_steps
        if staircase:
            p = torch.floor(p)
        value = torch.where(elapsed <= 0, _const(init_value, count),
                            init_value * torch.pow(decay_rate, p))
        if end_value is not None:
            bound = _const(end_value, count)
            value = torch.maximum(value, bound) if decay_rate < 1 else torch.minimum(value, bound)
        return value

    return schedule


def piecewise_constant_schedule(init_value: float,
                                boundaries_and_scales: Mapping[int, float] | None = None
                                ) -> Schedule:
    """Multiply the value by ``scale`` at each ``boundary`` of ``boundaries_and_scales``.

    Like ``torch.optim.lr_scheduler.MultiStepLR``, with a factor per milestone.

    Args:
        init_value: the value before the first boundary.
        boundaries_and_scales: a mapping from step to the factor applied from that step on.

    Returns:
        A schedule.

    Raises:
        ValueError: if a scale is negative.

    Example:
        >>> from functrain import optim
        >>> sched = optim.piecewise_constant_schedule(1.0, {2: 0.5, 4: 0.1})
        >>> [round(sched(t).item(), 3) for t in range(6)]
        [1.0, 1.0, 0.5, 0.5, 0.05, 0.05]
    """
    _checks.number("init_value", init_value)
    items = sorted((boundaries_and_scales or {}).items())
    for boundary, s in items:
        _steps(f"boundaries_and_scales[{boundary!r}] (the key)", boundary)
        _checks.number(f"boundaries_and_scales[{boundary!r}]", s, low=0.0)

    def schedule(count: Any) -> torch.Tensor:
        count = _count(count)
        value = _const(init_value, count)
        for boundary, s in items:
            value = torch.where(count < boundary, value, value * s)
        return value

    return schedule



def piecewise_interpolate_schedule(interpolate_type: str, init_value: float,
                                   boundaries_and_scales: Mapping[int, float] | None = None
                                   ) -> Schedule:
    """Interpolate (linearly or by a half cosine) between values that change by a factor at
    each boundary: the value reaches ``init_value * prod(scales up to b)`` at boundary ``b``.

    Args:
        interpolate_type: ``"linear"`` or ``"cosine"``.
        init_value: the value at step 0.
        boundaries_and_scales: a mapping from step to the factor reached at that step.

    Returns:
        A schedule.

    Raises:
        ValueError: on a bad ``interpolate_type`` or a negative scale.

    Example:
        >>> from functrain import optim
        >>> sched = optim.piecewise_interpolate_schedule("linear", 1.0, {2: 0.5, 4: 0.0})
        >>> [round(sched(t).item(), 3) for t in range(6)]
        [1.0, 0.75, 0.5, 0.25, 0.0, 0.0]
    """
    _errors.check_choice("interpolate_type", interpolate_type, ("linear", "cosine"))
    _checks.number("init_value", init_value)
    items = sorted((boundaries_and_scales or {}).items())
    for boundary, s in items:
        _steps(f"boundaries_and_scales[{boundary!r}] (the key)", boundary)
        _checks.number(f"boundaries_and_scales[{boundary!r}]", s, low=0.0)
    bounds = [0] + [b for b, _ in items]
    values = [float(init_value)]
    for _, s in items:
        values.append(values[-1] * s)

    def interpolate(start, end, pct):
        if interpolate_type == "linear":
            return (end - start) * pct + start
        return end + (start - end) / 2.0 * (torch.cos(math.pi * pct) + 1)

    def schedule(count: Any) -> torch.Tensor:
        count = _count(count)
        c = _as_float(count)
        out = _const(values[-1], count) * (count >= bounds[-1])
        for i in range(len(bounds) - 1):
            size = max(bounds[i + 1] - bounds[i], 1)
            inside = (bounds[i] <= count) & (count < bounds[i + 1])
            value = interpolate(values[i], values[i + 1], (c - bounds[i]) / size)
            out = out + torch.where(inside, value, 0.0)
        return out

    return schedule


def _onecycle_steps(transition_steps: Any) -> None:
    _steps("transition_steps", transition_steps)
    if transition_steps <= 0:
        raise ValueError(f"transition_steps: expected a positive number of steps, got "
                         f"{transition_steps}.")


def linear_onecycle_schedule(transition_steps: int, peak_value: float, pct_start: float = 0.3,
                             pct_final: float = 0.85, div_factor: float = 25.0,
                             final_div_factor: float = 1e4) -> Schedule:
    """The one-cycle policy (Smith & Topin, 2017) with linear pieces: from
    ``peak / div_factor`` up to ``peak`` at ``pct_start``, back down by ``pct_final``, then to
    ``peak / (div_factor * final_div_factor)`` at ``transition_steps``.

    Args:
        transition_steps: the cycle's length, > 0.
        peak_value: the largest value.
        pct_start: fraction of the cycle spent rising.
        pct_final: fraction of the cycle at which the descent to the start value ends.
        div_factor: ``peak / initial value``, > 0.
        final_div_factor: ``initial value / final value``, > 0.

    Returns:
        A schedule.

    Example:
        >>> from functrain import optim
        >>> sched = optim.linear_onecycle_schedule(10, 1.0, pct_start=0.2, pct_final=0.6,
        ...                                        div_factor=4.0, final_div_factor=1.0)
        >>> [round(sched(t).item(), 3) for t in (0, 1, 2, 4, 6, 10)]
        [0.25, 0.625, 1.0, 0.625, 0.25, 0.25]
    """
    _onecycle_steps(transition_steps)
    _checks.number("peak_value", peak_value)
    _checks.positive("div_factor", div_factor)
    _checks.positive("final_div_factor", final_div_factor)
    return piecewise_interpolate_schedule(
        "linear", peak_value / div_factor,
        {int(pct_start * transition_steps): div_factor,
         int(pct_final * transition_steps): 1.0 / div_factor,
         transition_steps: 1.0 / final_div_factor})


def cosine_onecycle_schedule(transition_steps: int, peak_value: float, pct_start: float = 0.3,
                             div_factor: float = 25.0, final_div_factor: float = 1e4
                             ) -> Schedule:
    """The one-cycle policy with half-cosine pieces (``torch.optim.lr_scheduler.OneCycleLR``'s
    default shape): up from ``peak / div_factor`` to ``peak`` over ``pct_start`` of the cycle,
    then down to ``peak / (div_factor * final_div_factor)``.

    Args:
        transition_steps: the cycle's length, > 0.
        peak_value: the largest value.
        pct_start: fraction of the cycle spent rising.
        div_factor: ``peak / initial value``, > 0.
        final_div_factor: ``initial value / final value``, > 0.

    Returns:
        A schedule.

    Example:
        >>> from functrain import optim
        >>> sched = optim.cosine_onecycle_schedule(10, 1.0, pct_start=0.2, div_factor=4.0,
        ...                                        final_div_factor=1.0)
        >>> [round(sched(t).item(), 3) for t in (0, 1, 2, 6, 10)]
        [0.25, 0.625, 1.0, 0.625, 0.25]
    """
    _onecycle_steps(transition_steps)
    _checks.number("peak_value", peak_value)
    _checks.positive("div_factor", div_factor)
    _checks.positive("final_div_factor", final_div_factor)
    return piecewise_interpolate_schedule(
        "cosine", peak_value / div_factor,
        {int(pct_start * transition_steps): div_factor,
         int(transition_steps): 1.0 / (div_factor * final_div_factor)})


def warmup_constant_schedule(init_value: float, peak_value: float, warmup_steps: int
                             ) -> Schedule:
    """Linear warm-up from ``init_value`` to ``peak_value``, then constant.

    Args:
        init_value: the value at step 0.
        peak_value: the value from ``warmup_steps`` on.
        warmup_steps: the length of the warm-up.

    Returns:
        A schedule.

    Example:
        >>> from functrain import optim
        >>> sched = optim.warmup_constant_schedule(0.0, 1.0, warmup_steps=4)
        >>> [round(sched(t).item(), 2) for t in range(6)]
        [0.0, 0.25, 0.5, 0.75, 1.0, 1.0]
    """
    return linear_schedule(init_value, peak_value, warmup_steps)


def warmup_exponential_decay_schedule(init_value: float, peak_value: float, warmup_steps: int,
                                      transition_steps: int, decay_rate: float,
                                      transition_begin: int = 0, staircase: bool = False,
                                      end_value: float | None = None) -> Schedule:
    """Linear warm-up to ``peak_value``, then `exponential_decay` from it (the decay's count
    starts at the end of the warm-up).

    Args:
        init_value: the value at step 0.
        peak_value: the value at the end of the warm-up.
        warmup_steps: the length of the warm-up.
        transition_steps: steps per factor of ``decay_rate``.
        decay_rate: the decay factor.
        transition_begin: steps after the warm-up before decaying.
        staircase: decay in whole steps.
        end_value: a floor (or ceiling) for the value.

    Returns:
        A schedule.

    Example:
        >>> from functrain import optim
        >>> sched = optim.warmup_exponential_decay_schedule(0.0, 1.0, 2, 1, 0.5)
        >>> [round(sched(t).item(), 3) for t in range(5)]
        [0.0, 0.5, 1.0, 0.5, 0.25]
    """
    return join_schedules(
        [linear_schedule(init_value, peak_value, warmup_steps),
         exponential_decay(peak_value, transition_steps, decay_rate, transition_begin,
                           staircase, end_value)],
        [warmup_steps])


def sgdr_schedule(cosine_kwargs: Sequence[Mapping[str, Any]]) -> Schedule:
    """SGDR (Loshchilov & Hutter, 2017): warm restarts, one `warmup_cosine_decay_schedule` per
    cycle, each cycle ``decay_steps`` long.

    Args:
        cosine_kwargs: the arguments of each cycle's `warmup_cosine_decay_schedule`.

    Returns:
        A schedule.

    Example:
        >>> from functrain import optim
        >>> cycle = dict(init_value=0.0, peak_value=1.0, warmup_steps=1, decay_steps=3)
        >>> sched = optim.sgdr_schedule([cycle, cycle])
        >>> [round(sched(t).item(), 2) for t in range(6)]
        [0.0, 1.0, 0.5, 0.0, 1.0, 0.5]
    """
    schedules, boundaries, step = [], [], 0
    for i, kwargs in enumerate(cosine_kwargs):
        if not isinstance(kwargs, Mapping) or "decay_steps" not in kwargs:
            raise TypeError(f"cosine_kwargs[{i}]: expected a mapping of "
                            "warmup_cosine_decay_schedule's arguments with decay_steps, got "
                            f"{_checks.describe(kwargs)}.")
        schedules.append(warmup_cosine_decay_schedule(**kwargs))
        step += kwargs["decay_steps"]
        boundaries.append(step)
    if not schedules:
        raise ValueError("cosine_kwargs: expected at least one cycle, got none.")
    return join_schedules(schedules, boundaries[:-1])
