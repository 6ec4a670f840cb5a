"""The building blocks: scaling, learning rates, momentum (`trace`) and weight decay; and the
per-leaf helpers the adaptive transformations (``_adaptive.py``) share.

Every transformation follows optax's math and defaults. Hyperparameters may be Python numbers or
0-d tensors (as `inject_hyperparams` passes them); step counters are 0-d int64 tensors, so a
compiled step never recompiles as they change. Every transformation keeps each update leaf's
dtype.

Implementation note: the math is written per leaf (``tree_map`` over leaves, in-place ops on
fresh intermediates), not with ``torch._foreach_*`` ops, because compiled, per-leaf measured
far faster (AdamW, ~10M parameters in 100 leaves, 2 CPU threads, torch 2.14, a shared
machine: ~22 ms/step per-leaf against ~820 ms for the same math in ``_foreach`` ops, whose CPU
lowering in inductor is poor); inductor fuses each leaf's whole chain (moments, decay, learning
rate, apply, write-back) into one loop: see ``benchmarks/optim_update.py``. Eagerly, the most
used pieces (`scale_by_adam`, `scale`, `scale_by_schedule`, `add_decayed_weights` with a
number, `apply_updates`) run as ``_foreach`` ops over all leaves instead (``_foreach.py``: the
same ops, the same bits), which saves most of the per-leaf Python calls on small models (8
leaves of 1000 floats: AdamW 0.52 -> 0.33 ms/step, 1 thread) and measured no slower on
10M parameters in 100 leaves (78 vs 80 ms/step, 1 thread).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import torch

from functrain import tree as _tree

from . import _checks, _foreach
from ._base import (
    EmptyState,
    GradientTransformation,
    Params,
    ScalarOrSchedule,
    Schedule,
    Updates,
    zero_count,
)
from ._masking import masked

_NO_PARAMS = ("{name}: expected params, got None. HINT: pass the params as the third argument "
              "of update: opt.update(grads, state, params).")


def per_leaf(fn: Callable[..., tuple], updates: Updates, *states: Any) -> list[Any]:
    """Apply ``fn(g, *state_leaves) -> (update, *new_state_leaves)`` leaf by leaf.

    Returns the trees ``[updates, *new_states]``. Each output tree is built on its input tree
    (``tree_map`` keyed on it), so it keeps that tree's dict insertion order: a runner that
    writes the new state back into the old one leaf by leaf pairs the right tensors even when
    the gradients' dicts are ordered differently from the params'. Written with ``tree_map``
    only (no flatten/unflatten), which dynamo traces for every tree.
    """
    outs = _tree.map(fn, updates, *states)
    return [_tree.map(lambda _, o, i=i: o[i], ref, outs)
            for i, ref in enumerate((updates, *states))]


class BiasCorrections:
    """Inverse bias corrections ``1 / (1 - decay**count)``, computed once per step and dtype
    (float64 leaves get float64 scalars, every other dtype float32)."""

    def __init__(self, count: torch.Tensor) -> None:
        self.count = count
        self._cache: dict[tuple[str, torch.dtype, int], torch.Tensor] = {}
        self._counts: dict[tuple[torch.dtype, int], torch.Tensor] = {}

    def inverse(self, name: str, decay: Any, dtype: torch.dtype, offset: int = 0) -> torch.Tensor:
        # Keyed by name, not id(decay): an id would become a guard under torch.compile.
        dt = torch.promote_types(dtype, torch.float32)
        key = (name, dt, offset)
        if key not in self._cache:
            c = self._counts.get((dt, offset))
            if c is None:  # shared by every decay: one cast per step and dtype
                c = self._counts[dt, offset] = (
                    self.count + offset if offset else self.count).to(dt)  # >= 1
            # decay**c written as exp(c * log(decay)): the same number (to an ulp or two), but
            # inductor counts exp as a heavy op and computes it once per step, where it inlines
            # a pow into every vectorized iteration of every leaf's loop (that cost ~30% of a
            # compiled AdamW step on CPU).
            if isinstance(decay, torch.Tensor):
                power = torch.exp(c * torch.log(decay.to(dt)))
            elif decay > 0:
                power = torch.exp(c * math.log(decay))
            else:
                power = torch.zeros_like(c)
            # 1 - power, then 1 / that (which Tensor.__rdiv__ computes as reciprocal() * 1)
            self._cache[key] = torch.rsub(power, 1).reciprocal().to(dt)
        return self._cache[key]


def scale_tree(updates: Updates, step_size: Any, params: Params | None) -> Updates:
    """``g * step_size`` for every leaf, in the leaf's dtype (one foreach op when eager), after
    the API-edge check of ``updates`` against ``params``."""
    fast = _foreach.leaves(updates, *(() if params is None else (params,)))
    if fast:  # (its checks imply update_inputs')
        (gs, *_), (spec, *_) = fast
        return _foreach.unflatten(spec, _foreach.scale(gs, step_size))
    _checks.update_inputs(updates, params)
    return _tree.map(lambda g: (g * step_size).to(g.dtype), updates)


def zeros(params: Params, dtype: torch.dtype | None = None, fill: float = 0.0) -> Any:
    """A tree like ``params`` filled with ``fill`` (in ``dtype``, default the leaf's)."""
    return _tree.map(lambda p: torch.full_like(p, fill, dtype=dtype), params)


def is_number(x: Any) -> bool:
    """A Python int or float (not a bool, not a tensor)."""
    return isinstance(x, (int, float)) and not isinstance(x, bool)


# The moment updates take a fused single-op path (as torch.optim writes them) when the decay is
# a Python number, and a generic path for 0-d tensor decays (from inject_hyperparams). Same math;
# the fused path allocates less in eager mode.


def moment(g: torch.Tensor, m: torch.Tensor, decay: Any) -> torch.Tensor:
    """``decay * m + (1 - decay) * g``, as ``m + (1 - decay) * (g - m)`` (``torch.lerp``)."""
    if is_number(decay) and g.dtype == m.dtype:
        return torch.lerp(m, g, 1 - decay)
    return (g - m).mul_(1 - decay).add_(m)


def moment_sq(g: torch.Tensor, v: torch.Tensor, decay: Any) -> torch.Tensor:
    """``decay * v + (1 - decay) * g**2``."""
    if is_number(decay):
        # Out of place: torch.func.vmap has no batching rule for the in-place addcmul_ (a
        # population step would fall back to a per-member loop). Eagerly the same kernel and
        # bits; compiled, Inductor rounds the two forms differently in the last bit (as it
        # rounds either one differently from eager).
        return torch.addcmul(v * decay, g, g, value=1 - decay)
    return (g * g).mul_(1 - decay).add_(v * decay)


# ---------------------------------------------------------------------------------------------
# Scaling.


def scale(step_size: float | torch.Tensor) -> GradientTransformation:
    """Multiply the updates by a constant ``step_size``.

    Args:
        step_size: a number (any sign) or a 0-d tensor.

    Returns:
        A stateless `GradientTransformation`.

    Example:
        >>> import torch
        >>> from functrain import optim
        >>> optim.scale(-2.0).update({"w": torch.ones(2)}, optim.EmptyState())[0]
        {'w': tensor([-2., -2.])}
    """
    _checks.number("step_size", step_size)

    def init_fn(params: Params) -> EmptyState:
        del params
        return EmptyState()

    def update_fn(updates: Updates, state: EmptyState, params: Params | None = None):
        return scale_tree(updates, step_size, params), state

    return GradientTransformation(init_fn, update_fn)


class ScaleByScheduleState(NamedTuple):
    """State of `scale_by_schedule`: the 0-d int64 step ``count``.

    Example:
        >>> import torch
        >>> from functrain import optim
        >>> optim.scale_by_schedule(optim.constant_schedule(0.1)).init({"w": torch.zeros(1)})
        ScaleByScheduleState(count=tensor(0))
    """

    count: torch.Tensor


def scale_by_schedule(step_size_fn: Schedule) -> GradientTransformation:
    """Multiply the updates by ``step_size_fn(count)``, where ``count`` is the step number.

    The first update uses ``step_size_fn(0)``, as ``torch.optim.lr_scheduler`` does.

    Args:
        step_size_fn: a schedule: a function of a 0-d int64 tensor returning a number or 0-d
            tensor, written without Python branches on the count (see ``functrain.optim``'s
            schedules).

    Returns:
        A `GradientTransformation` with `ScaleByScheduleState`.

    Raises:
        TypeError: if ``step_size_fn`` is not callable.

    Example:
        >>> import torch
        >>> from functrain import optim
        >>> opt = optim.scale_by_schedule(lambda count: 1.0 / (count + 1))
        >>> state = opt.init({"w": torch.ones(1)})
        >>> for _ in range(3):
        ...     updates, state = opt.update({"w": torch.ones(1)}, state)
        >>> updates["w"], state.count
        (tensor([0.3333]), tensor(3))
    """
    if not callable(step_size_fn):
        raise TypeError(f"step_size_fn: expected a schedule (a callable of the step count), "
                        f"got {_checks.describe(step_size_fn)}.")

    def init_fn(params: Params) -> ScaleByScheduleState:
        return ScaleByScheduleState(count=zero_count(params))

    def update_fn(updates: Updates, state: ScaleByScheduleState, params: Params | None = None):
        step_size = step_size_fn(state.count)
        updates = scale_tree(updates, step_size, params)
        return updates, ScaleByScheduleState(count=state.count + 1)

    return GradientTransformation(init_fn, update_fn)


def scale_by_learning_rate(learning_rate: ScalarOrSchedule, *,
                           flip_sign: bool = True) -> GradientTransformation:
    """Scale the updates by ``-learning_rate`` (gradient descent), a constant or a schedule.

    Args:
        learning_rate: a non-negative number, 0-d tensor, or a schedule of the step count.
        flip_sign: multiply by ``-learning_rate`` (the default) rather than ``learning_rate``.

    Returns:
        A `GradientTransformation`: `scale` for a constant, `scale_by_schedule` for a schedule.

    Raises:
        TypeError: if ``learning_rate`` is neither a number nor callable.
        ValueError: if ``learning_rate`` is negative.

    Example:
        >>> import torch
        >>> from functrain import optim
        >>> opt = optim.scale_by_learning_rate(0.1)
        >>> opt.update({"w": torch.ones(2)}, opt.init(None))[0]
        {'w': tensor([-0.1000, -0.1000])}
    """
    _checks.scalar_or_schedule("learning_rate", learning_rate)
    m = -1 if flip_sign else 1
    if callable(learning_rate) and not isinstance(learning_rate, torch.Tensor):
        return scale_by_schedule(lambda count: m * learning_rate(count))
    return scale(m * learning_rate)


# ---------------------------------------------------------------------------------------------
# Momentum.


class TraceState(NamedTuple):
    """State of `trace`: the momentum buffer ``trace``.

    Example:
        >>> import torch
        >>> from functrain import optim
        >>> optim.trace(decay=0.9).init({"w": torch.ones(2)})
        TraceState(trace={'w': tensor([0., 0.])})
    """

    trace: Updates


def trace(decay: float, nesterov: bool = False,
          accumulator_dtype: torch.dtype | None = None) -> GradientTransformation:
    """Momentum: ``t = decay * t + g``; the update is ``t`` (or ``g + decay * t`` if nesterov).

    Matches ``torch.optim.SGD``'s momentum buffer with ``dampening=0``.

    Args:
        decay: the momentum coefficient, in [0, 1).
        nesterov: use Nesterov momentum.
        accumulator_dtype: dtype of the buffer (``None``: the params' dtype).

    Returns:
        A `GradientTransformation` with `TraceState`.

    Example:
        >>> import torch
        >>> from functrain import optim
        >>> opt = optim.trace(decay=0.5)
        >>> state = opt.init({"w": torch.zeros(1)})
        >>> for _ in range(2):
        ...     updates, state = opt.update({"w": torch.ones(1)}, state)
        >>> updates["w"]  # 0.5 * 1 + 1
        tensor([1.5000])
    """
    _checks.beta("decay", decay)
    _checks.dtype_or_none("accumulator_dtype", accumulator_dtype)

    def init_fn(params: Params) -> TraceState:
        _checks.float_leaves(params, "params")
        return TraceState(trace=zeros(params, accumulator_dtype))

    def update_fn(updates: Updates, state: TraceState, params: Params | None = None):
        _checks.update_inputs(updates, params)
        _checks.updates(updates, state.trace, dtype=False, ref_name="state.trace")

        def one(g, t):
            f = g + t * decay  # in the wider dtype, like optax; bitwise torch.optim.SGD's buffer
            u = (f * decay).add_(g) if nesterov else f
            return u.to(g.dtype), f.to(t.dtype)

        u, t = per_leaf(one, updates, state.trace)
        return u, TraceState(trace=t)

    return GradientTransformation(init_fn, update_fn)


# ---------------------------------------------------------------------------------------------
# Weight decay.


class WeightDecayScheduleState(NamedTuple):
    """State of `add_decayed_weights` with a scheduled ``weight_decay``: the step ``count``.

    Example:
        >>> import torch
        >>> from functrain import optim
        >>> optim.add_decayed_weights(optim.linear_schedule(0.1, 0.0, 10)).init(
        ...     {"w": torch.zeros(1)})
        WeightDecayScheduleState(count=tensor(0))
    """

    count: torch.Tensor


def add_decayed_weights(weight_decay: ScalarOrSchedule = 0.0,
                        mask: Any | Callable[[Params], Any] | None = None
                        ) -> GradientTransformation:
    """Add ``weight_decay * params`` to the updates (decoupled weight decay, as in AdamW).

    Chained before the learning-rate scaling, the decay is multiplied by the learning rate,
    as ``torch.optim.AdamW`` and optax both do.

    Args:
        weight_decay: the decay rate, >= 0, or a schedule of the step count (the state then
            counts steps: `WeightDecayScheduleState`).
        mask: a pytree of bools with the params' structure (or a prefix of it), or a function
            of the params returning one; ``True`` where weight decay applies. ``None``: all.

    Returns:
        A `GradientTransformation` (wrapped in `masked` if ``mask`` is given).

    Raises:
        ValueError: if ``weight_decay`` is negative, or (at update) if ``params`` is None.

    Example:
        >>> import torch
        >>> from functrain import optim
        >>> params = {"w": torch.tensor([2.0]), "b": torch.tensor([2.0])}
        >>> opt = optim.add_decayed_weights(0.5, mask={"w": True, "b": False})
        >>> grads = {"w": torch.zeros(1), "b": torch.zeros(1)}
        >>> updates, _ = opt.update(grads, opt.init(params), params)
        >>> updates
        {'w': tensor([1.]), 'b': tensor([0.])}
    """
    scheduled = callable(weight_decay) and not isinstance(weight_decay, torch.Tensor)
    if not scheduled:
        _checks.number("weight_decay", weight_decay, low=0.0, hint="pass a number >= 0 "
                       "or a schedule (a callable of the step count).")

    def init_fn(params: Params) -> EmptyState | WeightDecayScheduleState:
        if scheduled:
            return WeightDecayScheduleState(count=zero_count(params))
        return EmptyState()

    def update_fn(updates: Updates, state: Any, params: Params | None = None):
        if params is None:
            raise ValueError(_NO_PARAMS.format(name="add_decayed_weights"))
        if not scheduled and is_number(weight_decay):
            fast = _foreach.leaves(updates, params)
            if fast:  # eager: one foreach op, the same bits (its checks imply update_inputs')
                (gs, ps), (spec, _) = fast
                return _foreach.unflatten(spec, _foreach.decay(gs, ps, weight_decay)), state
        _checks.update_inputs(updates, params)
        if scheduled:
            wd = weight_decay(state.count)
            state = WeightDecayScheduleState(count=state.count + 1)
            decay = lambda g, p: (p * wd).to(g.dtype).add_(g)  # noqa: E731
        elif is_number(weight_decay):
            decay = lambda g, p: torch.add(g, p, alpha=weight_decay).to(g.dtype)  # noqa: E731
        else:
            decay = lambda g, p: (p * weight_decay).add_(g).to(g.dtype)  # noqa: E731
        return _tree.map(decay, updates, params), state

    t = GradientTransformation(init_fn, update_fn)
    return t if mask is None else masked(t, mask)
