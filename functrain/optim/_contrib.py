"""Recent optimizers that optax keeps in ``optax.contrib``: Prodigy, SAM (with its
``normalize``), ADOPT and AdEMAMix, under optax.contrib's names, arguments and defaults."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import torch

from functrain import _errors
from functrain import tree as _tree

from . import _checks
from ._adam_family import scalar_dtype, scale_by_ademamix, scale_by_adopt
from ._base import (
    EmptyState,
    GradientTransformation,
    MaskOrFn,
    OptState,
    Params,
    ScalarOrSchedule,
    Updates,
    apply_updates,
    chain,
    device_of,
    zero_count,
)
from ._transforms import _NO_PARAMS, add_decayed_weights, scale_by_learning_rate
from ._wrappers import select


def adopt(learning_rate: ScalarOrSchedule, b1: float = 0.9, b2: float = 0.9999,
          eps: float = 1e-6, mu_dtype: torch.dtype | None = None, *, nesterov: bool = False,
          use_clipping: bool = True,
          clip_value_fn: Callable[[torch.Tensor], Any] = lambda x: x**0.25
          ) -> GradientTransformation:
    """ADOPT (Taniguchi et al., 2024): `scale_by_adopt` then the learning rate.

    Args:
        learning_rate: a non-negative number or a schedule.
        b1: decay rate of the momentum, in [0, 1).
        b2: decay rate of the second moment, in [0, 1).
        eps: floor of ``sqrt(nu)``.
        mu_dtype: dtype of the momentum.
        nesterov: use Nesterov momentum.
        use_clipping: clip the normalized gradient.
        clip_value_fn: the clipping bound as a function of the step count.

    Returns:
        A `GradientTransformation` (a `chain`).

    Example:
        >>> import torch
        >>> from functrain import optim
        >>> opt = optim.adopt(0.1)
        >>> params = {"w": torch.tensor([1.0])}
        >>> state = opt.init(params)
        >>> for _ in range(2):
        ...     updates, state = opt.update({"w": torch.tensor([2.0])}, state, params)
        >>> updates["w"]
        tensor([-0.0100])
    """
    return chain(scale_by_adopt(b1, b2, eps, mu_dtype, nesterov=nesterov,
                                use_clipping=use_clipping, clip_value_fn=clip_value_fn),
                 scale_by_learning_rate(learning_rate))


def ademamix(learning_rate: ScalarOrSchedule, b1: float = 0.9, b2: float = 0.999,
             b3: Any = 0.9999, alpha: Any = 5.0, eps: float = 1e-8, eps_root: float = 0.0,
             mu_dtype: torch.dtype | None = None, weight_decay: ScalarOrSchedule = 0.0,
             mask: MaskOrFn = None) -> GradientTransformation:
    """AdEMAMix (Pagliardini et al., 2024): `scale_by_ademamix`, decoupled weight decay, the
    learning rate. ``b3`` and ``alpha`` may be schedules (the paper warms both up).

    Args:
        learning_rate: a non-negative number or a schedule.
        b1: decay rate of the fast momentum, in [0, 1).
        b2: decay rate of the second moment, in [0, 1).
        b3: decay rate of the slow momentum (a number or a schedule).
        alpha: weight of the slow momentum (a number or a schedule).
        eps: added to the denominator outside the square root.
        eps_root: added inside the square root.
        mu_dtype: dtype of the moments.
        weight_decay: decoupled weight decay.
        mask: where to apply weight decay.

    Returns:
        A `GradientTransformation` (a `chain`).

    Example:
        >>> import torch
        >>> from functrain import optim
        >>> opt = optim.ademamix(0.1, alpha=0.0)
        >>> params = {"w": torch.tensor([1.0])}
        >>> opt.update({"w": torch.tensor([2.0])}, opt.init(params), params)[0]["w"]
        tensor([-0.1000])
    """
    return chain(scale_by_ademamix(b1, b2, b3, alpha, eps, eps_root, mu_dtype),
                 add_decayed_weights(weight_decay, mask), scale_by_learning_rate(learning_rate))


# ---------------------------------------------------------------------------------------------
# Prodigy.


class ProdigyState(NamedTuple):
    """State of `prodigy` (optax.contrib's fields): moments of the scaled gradients, the
    weighted gradient sum, the initial params ``params0``, the learning-rate estimate
    ``estim_lr`` (0-d), the weighted numerator (0-d) and the step ``count``.

    Example:
        >>> import torch
        >>> from functrain import optim
        >>> optim.prodigy().init({"w": torch.ones(1)}).estim_lr
        tensor(1.0000e-06)
    """

    exp_avg: Updates
    exp_avg_sq: Updates
    grad_sum: Updates
    params0: Params
    estim_lr: torch.Tensor
    numerator_weighted: torch.Tensor
    count: torch.Tensor


def prodigy(learning_rate: ScalarOrSchedule = 1.0, betas: tuple[float, float] = (0.9, 0.999),
            beta3: float | None = None, eps: float = 1e-8, estim_lr0: float = 1e-6,
            estim_lr_coef: float = 1.0, weight_decay: float = 0.0,
            safeguard_warmup: bool = False) -> GradientTransformation:
    """Prodigy (Mishchenko & Defazio, 2023): Adam whose step size is estimated on the fly from
    the distance travelled, as optax.contrib computes it; ``learning_rate`` multiplies the
    estimate (keep 1.0, or a schedule such as cosine decay).

    Args:
        learning_rate: a multiplier of the estimated step size (a number or a schedule).
        betas: ``(b1, b2)``, Adam's decay rates, each in [0, 1).
        beta3: decay of the estimate's running sums (``None``: ``sqrt(b2)``).
        eps: added to the denominator (scaled by the estimate).
        estim_lr0: the initial estimate, > 0.
        estim_lr_coef: multiplies the estimate.
        weight_decay: decoupled weight decay (times the estimated step).
        safeguard_warmup: leave the schedule out of the running sum.

    Returns:
        A `GradientTransformation` with `ProdigyState`; it needs ``params`` at update.

    Example:
        >>> import torch
        >>> from functrain import optim
        >>> opt = optim.prodigy()
        >>> params = {"w": torch.tensor([1.0])}
        >>> updates, state = opt.update({"w": torch.tensor([2.0])}, opt.init(params), params)
        >>> updates["w"]  # the first step is tiny: estim_lr0
        tensor([-9.9999e-07])
    """
    _checks.scalar_or_schedule("learning_rate", learning_rate)
    if not (isinstance(betas, (tuple, list)) and len(betas) == 2):
        raise TypeError(f"betas: expected a pair (b1, b2), got {_errors.describe(betas)}.")
    _checks.beta("betas[0]", betas[0])
    _checks.beta("betas[1]", betas[1])
    if beta3 is not None:
        _checks.beta("beta3", beta3)
    _checks.non_negative("eps", eps)
    _checks.positive("estim_lr0", estim_lr0)
    _checks.number("estim_lr_coef", estim_lr_coef)
    _checks.non_negative("weight_decay", weight_decay)
    b1, b2 = betas
    b3 = b2**0.5 if beta3 is None else beta3

    def init_fn(params: Params) -> ProdigyState:
        _checks.float_leaves(params, "params")
        dt, device = scalar_dtype(params), device_of(params)
        zeros = lambda: _tree.map(torch.zeros_like, params)  # noqa: E731
        return ProdigyState(exp_avg=zeros(), exp_avg_sq=zeros(), grad_sum=zeros(),
                            params0=_tree.map(torch.clone, params),
                            estim_lr=torch.full((), estim_lr0, dtype=dt, device=device),
                            numerator_weighted=torch.zeros((), dtype=dt, device=device),
                            count=zero_count(params))

    def update_fn(updates: Updates, state: ProdigyState, params: Params | None = None,
                  **extra_args: Any):
        del extra_args
        if params is None:
            raise ValueError(_NO_PARAMS.format(name="prodigy"))
        _checks.update_inputs(updates, params)
        count_inc = state.count + 1
        sched = learning_rate(state.count) if callable(learning_rate) else learning_rate
        d = state.estim_lr
        c = count_inc.to(d.dtype)
        bc = torch.sqrt(1 - b2**c) / (1 - b1**c)
        dlr = (d * sched * bc).to(d.dtype)
        dg = _tree.map(lambda g: d * g, updates)
        numerator_acum = sum((torch.sum(g * (p0 - p)) for g, p0, p in zip(
            _tree.leaves(updates), _tree.leaves(state.params0), _tree.leaves(params),
            strict=True)), torch.zeros((), dtype=d.dtype, device=d.device))
        exp_avg = _tree.map(lambda ea, x: b1 * ea + (1 - b1) * x, state.exp_avg, dg)
        exp_avg_sq = _tree.map(lambda eas, x: b2 * eas + (1 - b2) * x * x, state.exp_avg_sq, dg)
        scale = d if safeguard_warmup else dlr
        grad_sum = _tree.map(lambda s, x: b3 * s + scale * x / estim_lr0, state.grad_sum, dg)
        numerator = b3 * state.numerator_weighted + d / estim_lr0 * dlr * numerator_acum
        denominator = sum((torch.abs(s).sum() for s in _tree.leaves(grad_sum)),
                          torch.zeros((), dtype=d.dtype, device=d.device))
        estim_lr = torch.maximum(d, estim_lr_coef * numerator / denominator)
        new = _tree.map(lambda ea, eas, p: -weight_decay * dlr * p
                        - dlr * ea / (torch.sqrt(eas) + estim_lr * eps),
                        exp_avg, exp_avg_sq, params)
        new = _tree.map(lambda u, g: u.to(g.dtype), new, updates)
        return new, ProdigyState(exp_avg, exp_avg_sq, grad_sum, state.params0, estim_lr,
                                 numerator, count_inc)

    return GradientTransformation(init_fn, update_fn)


# ---------------------------------------------------------------------------------------------
# SAM.


def normalize() -> GradientTransformation:
    """Divide all updates by their global norm (optax.contrib's ``normalize``, SAM's usual
    adversarial direction).

    Returns:
        A stateless `GradientTransformation`.

    Example:
        >>> import torch
        >>> from functrain import optim
        >>> optim.normalize().update({"a": torch.tensor([3.0]), "b": torch.tensor([4.0])},
        ...                          optim.EmptyState())[0]
        {'a': tensor([0.6000]), 'b': tensor([0.8000])}
    """

    def update_fn(updates: Updates, state: EmptyState, params: Params | None = None):
        _checks.update_inputs(updates, params)
        norm = _tree.global_norm(updates)
        return _tree.map(lambda g: g / norm.to(g.dtype), updates), state

    return GradientTransformation(lambda params: EmptyState(), update_fn)


class SAMState(NamedTuple):
    """State of `sam`: steps since the last real update, the outer optimizer's state, the
    adversarial optimizer's state and the cached params (``None`` in opaque mode).

    Example:
        >>> import torch
        >>> from functrain import optim
        >>> opt = optim.sam(optim.sgd(0.1), optim.chain(optim.normalize(), optim.sgd(0.05)))
        >>> opt.init({"w": torch.ones(1)}).steps_since_sync
        tensor(0)
    """

    steps_since_sync: torch.Tensor
    opt_state: OptState
    adv_state: OptState
    cache: Params | None


def sam(optimizer: GradientTransformation, adv_optimizer: GradientTransformation,
        sync_period: int = 2, reset_state: bool = True,
        opaque_mode: bool = False) -> GradientTransformation:
    """Sharpness-aware minimization (Foret et al., 2021), as optax.contrib's ``sam``.

    Transparent mode (the default): of every ``sync_period`` calls, the first
    ``sync_period - 1`` return adversarial steps (``-adv_optimizer``'s update: ascent, e.g.
    ``chain(normalize(), sgd(rho))``), and the last returns the outer optimizer's step taken
    from the cached params with that call's (adversarial) gradient. Your loop computes the
    gradient at the params it is given each time.

    Opaque mode: one call does the whole cycle, computing the adversarial gradients itself with
    ``grad_fn(params, i)`` passed at update: ``opt.update(grads, state, params,
    grad_fn=grad_fn)``.

    Args:
        optimizer: the outer optimizer.
        adv_optimizer: the adversarial step (its update is negated).
        sync_period: adversarial steps plus one, an int >= 1.
        reset_state: re-initialize ``adv_optimizer``'s state at every real update.
        opaque_mode: run the adversarial steps inside one update with ``grad_fn``.

    Returns:
        A `GradientTransformation` with `SAMState`.

    Example:
        >>> import torch
        >>> from functrain import optim
        >>> opt = optim.sam(optim.sgd(0.1), optim.chain(optim.normalize(), optim.sgd(0.5)))
        >>> params = {"w": torch.tensor([1.0])}
        >>> state = opt.init(params)
        >>> updates, state = opt.update({"w": torch.tensor([2.0])}, state, params)
        >>> updates["w"]  # the adversarial step: +rho * g / |g|
        tensor([0.5000])
    """
    _errors.check_int("sync_period", sync_period, minimum=1)

    def init_fn(params: Params) -> SAMState:
        return SAMState(steps_since_sync=zero_count(params), opt_state=optimizer.init(params),
                        adv_state=adv_optimizer.init(params),
                        cache=None if opaque_mode else _tree.map(torch.clone, params))

    def transparent(updates: Updates, state: SAMState, params: Params | None = None,
                    *, grad_fn: Any = None, **extra_args: Any):
        del grad_fn, extra_args
        if params is None:
            raise ValueError(_NO_PARAMS.format(name="sam"))
        first = state.steps_since_sync == 0
        last = state.steps_since_sync == sync_period - 1
        adv_updates, adv_state = adv_optimizer.update(updates, state.adv_state, params)
        adv_updates = _tree.map(lambda x: -x, adv_updates)
        opt_updates, opt_state = optimizer.update(updates, state.opt_state, state.cache)
        opt_updates = _tree.map(lambda c, p, u: c - p + u, state.cache, params, opt_updates)
        cache = select(first, params, state.cache)
        new_updates = select(last, opt_updates, adv_updates)
        if reset_state:
            adv_state = select(last, adv_optimizer.init(params), adv_state)
        else:
            adv_state = select(last, state.adv_state, adv_state)
        opt_state = select(last, opt_state, state.opt_state)
        return new_updates, SAMState((state.steps_since_sync + 1) % sync_period, opt_state,
                                     adv_state, cache)

    def opaque(updates: Updates, state: SAMState, params: Params | None = None,
               *, grad_fn: Any = None, **extra_args: Any):
        del extra_args
        if grad_fn is None:
            raise ValueError("sam: expected grad_fn=... at update in opaque mode, got None. "
                             "HINT: opt.update(grads, state, params, grad_fn=lambda p, i: "
                             "grads_at(p)).")
        adv_params, adv_updates, adv_state = params, updates, state.adv_state
        for i in range(sync_period - 1):
            adv_updates, adv_state = adv_optimizer.update(adv_updates, adv_state, adv_params)
            adv_updates = _tree.map(lambda x: -x, adv_updates)
            adv_params = apply_updates(adv_params, adv_updates)
            adv_updates = grad_fn(adv_params, i)
        if reset_state:
            adv_state = adv_optimizer.init(params)
        new_updates, opt_state = optimizer.update(adv_updates, state.opt_state, params)
        return new_updates, SAMState(torch.zeros_like(state.steps_since_sync), opt_state,
                                     adv_state, None)

    return GradientTransformation(init_fn, opaque if opaque_mode else transparent)
