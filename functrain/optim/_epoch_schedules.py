"""Per-epoch learning-rate schedules (``torch.optim.lr_scheduler.StepLR`` / ``MultiStepLR``)
written as the step schedules functrain's optimizers take, given the steps per epoch."""

from __future__ import annotations

import collections
from collections.abc import Iterable
from typing import Any

from .._errors import check_int, check_number, describe
from ._schedules import exponential_decay, piecewise_constant_schedule

__all__ = ["multistep_lr", "step_lr"]


def step_lr(init_value: float, steps_per_epoch: int, step_size: int,
            gamma: float = 0.1) -> Any:
    """Multiply the learning rate by ``gamma`` every ``step_size`` epochs: PyTorch's ``StepLR``
    stepped once per epoch, as a schedule of the optimizer's step count.

    Args:
        init_value: the learning rate of the first ``step_size`` epochs.
        steps_per_epoch: optimizer steps per epoch, usually ``len(loader)`` (with
            ``fit(..., accumulate=k)``: ``len(loader) // k``, the updates per epoch).
        step_size: epochs between decays.
        gamma: the factor per decay.

    Returns:
        A schedule (``count -> learning rate``) for e.g. ``ft.optim.sgd(ft.optim.step_lr(...))``.

    Raises:
        TypeError / ValueError: an argument is not a number in range; names it.

    Example:
        >>> sched = step_lr(1.0, steps_per_epoch=2, step_size=3, gamma=0.5)
        >>> [sched(t).item() for t in range(0, 14, 2)]  # the first step of epochs 0..6
        [1.0, 1.0, 1.0, 0.5, 0.5, 0.5, 0.25]
    """
    check_number("init_value", init_value)
    check_int("steps_per_epoch", steps_per_epoch, minimum=1,
              hint="pass len(loader), the optimizer steps in one epoch.")
    check_int("step_size", step_size, minimum=1)
    check_number("gamma", gamma, low=0.0)
    return exponential_decay(init_value, transition_steps=step_size * steps_per_epoch,
                                    decay_rate=gamma, staircase=True)


def multistep_lr(init_value: float, steps_per_epoch: int, milestones: Iterable[int],
                 gamma: float = 0.1) -> Any:
    """Multiply the learning rate by ``gamma`` at the start of each epoch in ``milestones``:
    PyTorch's ``MultiStepLR`` stepped once per epoch (a repeated milestone decays twice, as
    there).

    Args:
        init_value: the learning rate before the first milestone.
        steps_per_epoch: optimizer steps per epoch, usually ``len(loader)``.
        milestones: epoch numbers (0-based, as PyTorch counts ``scheduler.step()`` calls).
        gamma: the factor per milestone.

    Returns:
        A schedule (``count -> learning rate``).

    Raises:
        TypeError / ValueError: an argument is not a number in range; names it.

    Example:
        >>> sched = multistep_lr(1.0, steps_per_epoch=10, milestones=[2, 4], gamma=0.1)
        >>> [round(sched(t).item(), 4) for t in (0, 19, 20, 39, 40)]
        [1.0, 1.0, 0.1, 0.1, 0.01]
    """
    check_number("init_value", init_value)
    check_int("steps_per_epoch", steps_per_epoch, minimum=1,
              hint="pass len(loader), the optimizer steps in one epoch.")
    if not isinstance(milestones, Iterable) or isinstance(milestones, (str, bytes)):
        raise TypeError(f"milestones: expected a list of epoch numbers, got "
                        f"{describe(milestones)}.")
    epochs = [check_int(f"milestones[{i}]", m, minimum=1) for i, m in enumerate(milestones)]
    check_number("gamma", gamma, low=0.0)
    scales = {epoch * steps_per_epoch: gamma ** count
              for epoch, count in sorted(collections.Counter(epochs).items())}
    return piecewise_constant_schedule(init_value, scales)
