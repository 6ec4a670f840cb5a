"""More ready-made optimizers: the rest of optax's aliases (with optax's names, arguments and
defaults) and the ``torch.optim`` optimizers optax lacks (`asgd`; `nadam`'s momentum-decay
form).

Each is a `chain` of the transformations in ``_adam_family.py``, ``_classic.py``,
``_factored.py`` and ``_normalize.py``. Where ``torch.optim`` has the same optimizer, the
docstring says how to get its math (each such mapping is tested in float64).
"""

from __future__ import annotations

from typing import Any

import torch

from functrain import tree as _tree

from . import _checks
from ._adam_family import (
    scale_by_adamax,
    scale_by_adan,
    scale_by_amsgrad,
    scale_by_belief,
    scale_by_nadam,
    scale_by_radam,
    scale_by_yogi,
)
from ._adaptive import scale_by_adam
from ._alias import adam, adamw, sgd
from ._base import (
    EmptyState,
    GradientTransformation,
    MaskOrFn,
    Params,
    ScalarOrSchedule,
    Updates,
    chain,
)
from ._classic import (
    ema,
    scale_by_adadelta,
    scale_by_asgd,
    scale_by_novograd,
    scale_by_optimistic_gradient,
    scale_by_polyak,
    scale_by_rprop,
    scale_by_sign,
    scale_by_sm3,
)
from ._clipping import clip_by_block_rms
from ._factored import scale_by_factored_rms
from ._masking import masked
from ._noise import add_noise
from ._normalize import scale_by_param_block_rms, scale_by_trust_ratio
from ._transforms import _NO_PARAMS, add_decayed_weights, scale, scale_by_learning_rate, trace


def adabelief(learning_rate: ScalarOrSchedule, b1: float = 0.9, b2: float = 0.999,
              eps: float = 1e-16, eps_root: float = 1e-16, *,
              nesterov: bool = False) -> GradientTransformation:
    """AdaBelief (Zhuang et al., 2020): `scale_by_belief` then the learning rate.

    Args:
        learning_rate: a non-negative number or a schedule.
        b1: decay rate of the first moment, in [0, 1).
        b2: decay rate of the second moment, in [0, 1).
        eps: added to the denominator outside the square root.
        eps_root: added to the second moment.
        nesterov: use Nesterov momentum.

    Returns:
        A `GradientTransformation` (a `chain`).

    Example:
        >>> import torch
        >>> from functrain import optim
        >>> opt = optim.adabelief(0.1)
        >>> params = {"w": torch.tensor([1.0, -1.0])}
        >>> opt.update({"w": torch.tensor([0.5, -2.0])}, opt.init(params), params)[0]["w"]
        tensor([-0.1111,  0.1111])
    """
    return chain(scale_by_belief(b1, b2, eps, eps_root, nesterov=nesterov),
                 scale_by_learning_rate(learning_rate))


def adadelta(learning_rate: ScalarOrSchedule | None = None, rho: float = 0.9, eps: float = 1e-6,
             weight_decay: ScalarOrSchedule = 0.0,
             weight_decay_mask: MaskOrFn = None) -> GradientTransformation:
    """Adadelta (Zeiler, 2012): `scale_by_adadelta` then the learning rate.

    ``torch.optim.Adadelta(lr, rho, eps, weight_decay)`` is ``adadelta(lr, rho, eps,
    weight_decay)``: the same math (torch's weight decay is added to the gradient, as
    `add_decayed_weights` does here before the rescaling).

    Args:
        learning_rate: a non-negative number or a schedule (``None``: 1.0, torch's default).
        rho: decay rate of the running means, in [0, 1).
        eps: added inside the square roots.
        weight_decay: L2 weight decay added to the gradient (a number or a schedule).
        weight_decay_mask: where to apply it (see `adamw`'s ``mask``).

    Returns:
        A `GradientTransformation` (a `chain`).

    Example:
        >>> import torch
        >>> from functrain import optim
        >>> opt = optim.adadelta(1.0)
        >>> params = {"w": torch.tensor([1.0, -1.0])}
        >>> opt.update({"w": torch.tensor([0.5, -2.0])}, opt.init(params), params)[0]["w"]
        tensor([-0.0032,  0.0032])
    """
    return chain(add_decayed_weights(weight_decay, weight_decay_mask),
                 scale_by_adadelta(rho, eps),
                 scale_by_learning_rate(1.0 if learning_rate is None else learning_rate))


def adafactor(learning_rate: ScalarOrSchedule | None = None, min_dim_size_to_factor: int = 128,
              decay_rate: float = 0.8, decay_offset: int = 0,
              multiply_by_parameter_scale: bool = True,
              clipping_threshold: float | None = 1.0, momentum: float | None = None,
              dtype_momentum: torch.dtype = torch.float32,
              weight_decay_rate: ScalarOrSchedule | None = None, eps: float = 1e-30,
              factored: bool = True, weight_decay_mask: MaskOrFn = None
              ) -> GradientTransformation:
    """Adafactor (Shazeer & Stern, 2018) as optax composes it: factored RMS scaling, per-leaf
    RMS clipping, the learning rate, scaling by each param's RMS, optional momentum and
    weight decay.

    ``torch.optim.Adafactor(lr, beta2_decay=-0.8, eps=(None, 1e-3), d=1.0, weight_decay=wd)``
    computes, for params of at most 2 dimensions, the same as ``adafactor(learning_rate=lambda
    t: torch.clamp((t + 1.0) ** -0.5, max=lr), min_dim_size_to_factor=1, decay_rate=0.8,
    clipping_threshold=1.0, weight_decay_rate=lr * wd, eps=0.0)`` (torch's relative step is
    ``min(lr, 1/sqrt(t))``; its ``eps[1]`` is the 1e-3 floor of the param RMS, as here; its
    weight decay is multiplied by ``lr``, not by the relative step). torch factors the last two
    dimensions of a tensor, optax (and this) the two largest.

    Args:
        learning_rate: a number or a schedule (``None``: no learning-rate factor, optax's
            default: the step is the param's RMS times the clipped update).
        min_dim_size_to_factor: factor leaves whose two largest dimensions reach this.
        decay_rate: the second-moment decay exponent.
        decay_offset: a step offset for the decay.
        multiply_by_parameter_scale: scale steps by the param's RMS (at least 1e-3).
        clipping_threshold: the per-leaf RMS bound of the update (``None``: no clipping).
        momentum: momentum coefficient (``None``: none).
        dtype_momentum: dtype of the momentum.
        weight_decay_rate: decoupled weight decay (not multiplied by the learning rate).
        eps: added to ``g**2``.
        factored: factor the second moment at all.
        weight_decay_mask: where to apply weight decay.

    Returns:
        A `GradientTransformation` (a `chain`).

    Example:
        >>> import torch
        >>> from functrain import optim
        >>> opt = optim.adafactor(learning_rate=0.1)
        >>> params = {"w": torch.tensor([1.0, -1.0])}
        >>> opt.update({"w": torch.tensor([0.5, -2.0])}, opt.init(params), params)[0]["w"]
        tensor([-0.1000,  0.1000])
    """
    txs = [scale_by_factored_rms(factored, decay_rate, decay_offset, min_dim_size_to_factor,
                                 eps)]
    if clipping_threshold is not None:
        txs.append(clip_by_block_rms(clipping_threshold))
    if learning_rate is not None:
        txs.append(scale_by_learning_rate(learning_rate, flip_sign=False))
    if multiply_by_parameter_scale:
        txs.append(scale_by_param_block_rms())
    if momentum is not None:
        txs.append(ema(momentum, debias=False, accumulator_dtype=dtype_momentum))
    if weight_decay_rate is not None:
        txs.append(add_decayed_weights(weight_decay_rate, weight_decay_mask))
    txs.append(scale(-1))
    return chain(*txs)


def adamax(learning_rate: ScalarOrSchedule, b1: float = 0.9, b2: float = 0.999,
           eps: float = 1e-8) -> GradientTransformation:
    """Adamax (Kingma & Ba, 2014): `scale_by_adamax` then the learning rate.

    ``torch.optim.Adamax(lr, betas=(b1, b2), eps)`` is the same math; its ``weight_decay``
    (added to the gradient) is ``chain(add_decayed_weights(wd), adamax(...))``.

    Args:
        learning_rate: a non-negative number or a schedule.
        b1: decay rate of the first moment, in [0, 1).
        b2: decay rate of the infinity norm, in [0, 1).
        eps: added to ``|g|``.

    Returns:
        A `GradientTransformation` (a `chain`).

    Example:
        >>> import torch
        >>> from functrain import optim
        >>> opt = optim.adamax(0.1)
        >>> params = {"w": torch.tensor([1.0, -1.0])}
        >>> opt.update({"w": torch.tensor([0.5, -2.0])}, opt.init(params), params)[0]["w"]
        tensor([-0.1000,  0.1000])
    """
    return chain(scale_by_adamax(b1, b2, eps), scale_by_learning_rate(learning_rate))


def adamaxw(learning_rate: ScalarOrSchedule, b1: float = 0.9, b2: float = 0.999,
            eps: float = 1e-8, weight_decay: ScalarOrSchedule = 1e-4,
            mask: MaskOrFn = None) -> GradientTransformation:
    """Adamax with decoupled weight decay (multiplied by the learning rate, as in `adamw`).

    Args:
        learning_rate: a non-negative number or a schedule.
        b1: decay rate of the first moment, in [0, 1).
        b2: decay rate of the infinity norm, in [0, 1).
        eps: added to ``|g|``.
        weight_decay: the decoupled weight decay (a number or a schedule).
        mask: where to apply weight decay (see `adamw`).

    Returns:
        A `GradientTransformation` (a `chain`).

    Example:
        >>> import torch
        >>> from functrain import optim
        >>> opt = optim.adamaxw(0.1, weight_decay=0.5)
        >>> params = {"w": torch.tensor([1.0, -1.0])}
        >>> opt.update({"w": torch.tensor([0.5, -2.0])}, opt.init(params), params)[0]["w"]
        tensor([-0.1500,  0.1500])
    """
    return chain(scale_by_adamax(b1, b2, eps), add_decayed_weights(weight_decay, mask),
                 scale_by_learning_rate(learning_rate))


def amsgrad(learning_rate: ScalarOrSchedule, b1: float = 0.9, b2: float = 0.999,
            eps: float = 1e-8, eps_root: float = 0.0, mu_dtype: torch.dtype | None = None,
            bias_correction_mu: bool = True, bias_correction_nu: bool = True
            ) -> GradientTransformation:
    """AMSGrad (Reddi et al., 2018): `scale_by_amsgrad` then the learning rate.

    Args:
        learning_rate: a non-negative number or a schedule.
        b1: decay rate of the first moment, in [0, 1).
        b2: decay rate of the second moment, in [0, 1).
        eps: added to the denominator outside the square root.
        eps_root: added inside the square root.
        mu_dtype: dtype of the first moment.
        bias_correction_mu: bias-correct the first moment.
        bias_correction_nu: bias-correct the second moment.

    Returns:
        A `GradientTransformation` (a `chain`).

    Example:
        >>> import torch
        >>> from functrain import optim
        >>> opt = optim.amsgrad(0.1)
        >>> params = {"w": torch.tensor([1.0, -1.0])}
        >>> opt.update({"w": torch.tensor([0.5, -2.0])}, opt.init(params), params)[0]["w"]
        tensor([-0.1000,  0.1000])
    """
    return chain(scale_by_amsgrad(b1, b2, eps, eps_root, mu_dtype, bias_correction_mu,
                                  bias_correction_nu),
                 scale_by_learning_rate(learning_rate))


def adan(learning_rate: ScalarOrSchedule, b1: float = 0.98, b2: float = 0.92, b3: float = 0.99,
         eps: float = 1e-8, eps_root: float = 1e-8, weight_decay: ScalarOrSchedule = 0.0,
         mask: MaskOrFn = None) -> GradientTransformation:
    """Adan (Xie et al., 2022): `scale_by_adan`, decoupled weight decay, the learning rate.

    Args:
        learning_rate: a non-negative number or a schedule.
        b1: decay rate of the gradient moment, in [0, 1).
        b2: decay rate of the gradient-difference moment, in [0, 1).
        b3: decay rate of the second moment, in [0, 1).
        eps: added to the denominator outside the square root.
        eps_root: added inside the square root.
        weight_decay: decoupled weight decay (a number or a schedule).
        mask: where to apply weight decay.

    Returns:
        A `GradientTransformation` (a `chain`).

    Example:
        >>> import torch
        >>> from functrain import optim
        >>> opt = optim.adan(0.1)
        >>> params = {"w": torch.tensor([1.0, -1.0])}
        >>> opt.update({"w": torch.tensor([0.5, -2.0])}, opt.init(params), params)[0]["w"]
        tensor([-0.1000,  0.1000])
    """
    return chain(scale_by_adan(b1, b2, b3, eps, eps_root), add_decayed_weights(weight_decay, mask),
                 scale_by_learning_rate(learning_rate))


def _add_scaled_params(coef: Any) -> GradientTransformation:
    """``updates + coef * params`` for any sign of ``coef`` (a number or a schedule)."""
    if callable(coef):
        return add_decayed_weights(coef)  # schedules are not range-checked

    def update_fn(updates: Updates, state: EmptyState, params: Params | None = None):
        if params is None:
            raise ValueError(_NO_PARAMS.format(name="fromage"))
        return _tree.map(lambda g, p: (g + coef * p).to(g.dtype), updates, params), state

    return GradientTransformation(lambda params: EmptyState(), update_fn)


def fromage(learning_rate: ScalarOrSchedule, min_norm: float = 1e-6) -> GradientTransformation:
    """Fromage (Bernstein et al., 2020): trust-ratio steps, with the params shrunk by
    ``1 / sqrt(1 + lr**2)`` so their norms do not grow.

    Args:
        learning_rate: a non-negative number or a schedule.
        min_norm: norms below this count as this.

    Returns:
        A `GradientTransformation` (a `chain`).

    Example:
        >>> import torch
        >>> from functrain import optim
        >>> opt = optim.fromage(0.1)
        >>> params = {"w": torch.tensor([1.0, -1.0])}
        >>> opt.update({"w": torch.tensor([0.5, -2.0])}, opt.init(params), params)[0]["w"]
        tensor([-0.0391,  0.1415])
    """
    _checks.scalar_or_schedule("learning_rate", learning_rate)
    if not callable(learning_rate):
        mult = 1 / (1 + learning_rate**2) ** 0.5
        return chain(scale_by_trust_ratio(min_norm), scale_by_learning_rate(learning_rate * mult),
                     _add_scaled_params(mult - 1))
    mult_lr = lambda count: 1 / (1 + learning_rate(count) ** 2) ** 0.5  # noqa: E731
    return chain(scale_by_trust_ratio(min_norm),
                 scale_by_learning_rate(lambda c: mult_lr(c) * learning_rate(c)),
                 _add_scaled_params(lambda c: mult_lr(c) - 1))


def lars(learning_rate: ScalarOrSchedule, weight_decay: ScalarOrSchedule = 0.0,
         weight_decay_mask: MaskOrFn = True, trust_coefficient: float = 0.001, eps: float = 0.0,
         trust_ratio_mask: MaskOrFn = True, momentum: float = 0.9,
         nesterov: bool = False) -> GradientTransformation:
    """LARS (You et al., 2017): weight decay, a layer-wise trust ratio, the learning rate, then
    momentum.

    Args:
        learning_rate: a non-negative number or a schedule.
        weight_decay: L2 weight decay added to the gradient.
        weight_decay_mask: where to apply weight decay (True: everywhere).
        trust_coefficient: multiplies the trust ratio.
        eps: added to the update's norm in the ratio.
        trust_ratio_mask: where to apply the trust ratio (True: everywhere).
        momentum: the momentum coefficient, in [0, 1).
        nesterov: use Nesterov momentum.

    Returns:
        A `GradientTransformation` (a `chain`).

    Example:
        >>> import torch
        >>> from functrain import optim
        >>> opt = optim.lars(0.1)
        >>> params = {"w": torch.tensor([1.0, -1.0])}
        >>> opt.update({"w": torch.tensor([0.5, -2.0])}, opt.init(params), params)[0]["w"]
        tensor([-3.4300e-05,  1.3720e-04])
    """
    return chain(add_decayed_weights(weight_decay, None if weight_decay_mask is True
                                     else weight_decay_mask),
                 masked(scale_by_trust_ratio(trust_coefficient=trust_coefficient, eps=eps),
                        trust_ratio_mask) if trust_ratio_mask is not True
                 else scale_by_trust_ratio(trust_coefficient=trust_coefficient, eps=eps),
                 scale_by_learning_rate(learning_rate),
                 trace(momentum, nesterov))


def lamb(learning_rate: ScalarOrSchedule, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-6,
         eps_root: float = 0.0, weight_decay: ScalarOrSchedule = 0.0,
         mask: MaskOrFn = None) -> GradientTransformation:
    """LAMB (You et al., 2019): Adam plus decoupled weight decay, rescaled per leaf by the trust
    ratio ``|param| / |update|``.

    Args:
        learning_rate: a non-negative number or a schedule.
        b1: decay rate of the first moment, in [0, 1).
        b2: decay rate of the second moment, in [0, 1).
        eps: added to the denominator outside the square root.
        eps_root: added inside the square root.
        weight_decay: decoupled weight decay.
        mask: where to apply weight decay.

    Returns:
        A `GradientTransformation` (a `chain`).

    Example:
        >>> import torch
        >>> from functrain import optim
        >>> opt = optim.lamb(0.1)
        >>> params = {"w": torch.tensor([1.0, -1.0])}
        >>> opt.update({"w": torch.tensor([0.5, -2.0])}, opt.init(params), params)[0]["w"]
        tensor([-0.1000,  0.1000])
    """
    return chain(scale_by_adam(b1, b2, eps, eps_root), add_decayed_weights(weight_decay, mask),
                 scale_by_trust_ratio(), scale_by_learning_rate(learning_rate))


def nadam(learning_rate: ScalarOrSchedule, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8,
          eps_root: float = 0.0, mu_dtype: torch.dtype | None = None, *,
          momentum_decay: float | None = None) -> GradientTransformation:
    """NAdam (Dozat, 2016). By default optax's: `adam` with ``nesterov=True``.

    ``momentum_decay=psi`` switches to ``torch.optim.NAdam``'s rule instead (its momentum
    schedule ``b1 * (1 - 0.5 * 0.96**(t * psi))``, `scale_by_nadam`; torch's default psi is
    4e-3): ``torch.optim.NAdam(lr, betas, eps, momentum_decay=psi)`` is ``nadam(lr, b1, b2,
    eps, momentum_decay=psi)``; its L2 ``weight_decay`` is `add_decayed_weights` chained
    before, and ``decoupled_weight_decay=True`` is `nadamw`.

    Args:
        learning_rate: a non-negative number or a schedule.
        b1: decay rate of the first moment, in [0, 1).
        b2: decay rate of the second moment, in [0, 1).
        eps: added to the denominator outside the square root.
        eps_root: added inside the square root (optax's form only).
        mu_dtype: dtype of the first moment (optax's form only).
        momentum_decay: ``None`` for optax's form, or torch's psi.

    Returns:
        A `GradientTransformation` (a `chain`).

    Raises:
        ValueError: if ``eps_root`` or ``mu_dtype`` is given with ``momentum_decay``.

    Example:
        >>> import torch
        >>> from functrain import optim
        >>> opt = optim.nadam(0.1, momentum_decay=4e-3)
        >>> params = {"w": torch.tensor([1.0, -1.0])}
        >>> opt.update({"w": torch.tensor([0.5, -2.0])}, opt.init(params), params)[0]["w"]
        tensor([-0.1056,  0.1056])
    """
    if momentum_decay is None:
        return adam(learning_rate, b1, b2, eps, eps_root, mu_dtype, nesterov=True)
    if eps_root != 0.0 or mu_dtype is not None:
        raise ValueError("eps_root, mu_dtype: expected the defaults with momentum_decay (torch's "
                         f"NAdam has neither), got eps_root={eps_root!r}, mu_dtype={mu_dtype!r}.")
    return chain(scale_by_nadam(b1, b2, eps, momentum_decay),
                 scale_by_learning_rate(learning_rate))


def nadamw(learning_rate: ScalarOrSchedule, b1: float = 0.9, b2: float = 0.999,
           eps: float = 1e-8, eps_root: float = 0.0, mu_dtype: torch.dtype | None = None,
           weight_decay: ScalarOrSchedule = 1e-4, mask: MaskOrFn = None, *,
           momentum_decay: float | None = None) -> GradientTransformation:
    """NAdam with decoupled weight decay: `nadam`'s direction, ``+ weight_decay * params``,
    times the learning rate.

    With ``momentum_decay=psi`` this is ``torch.optim.NAdam(lr, betas, eps, weight_decay=wd,
    momentum_decay=psi, decoupled_weight_decay=True)``.

    Args:
        learning_rate: a non-negative number or a schedule.
        b1: decay rate of the first moment, in [0, 1).
        b2: decay rate of the second moment, in [0, 1).
        eps: added to the denominator outside the square root.
        eps_root: added inside the square root (optax's form only).
        mu_dtype: dtype of the first moment (optax's form only).
        weight_decay: decoupled weight decay (a number or a schedule).
        mask: where to apply weight decay.
        momentum_decay: ``None`` for optax's form, or torch's psi.

    Returns:
        A `GradientTransformation` (a `chain`).

    Example:
        >>> import torch
        >>> from functrain import optim
        >>> opt = optim.nadamw(0.1, weight_decay=0.5)
        >>> params = {"w": torch.tensor([1.0, -1.0])}
        >>> opt.update({"w": torch.tensor([0.5, -2.0])}, opt.init(params), params)[0]["w"]
        tensor([-0.1974,  0.1974])
    """
    if momentum_decay is None:
        return adamw(learning_rate, b1, b2, eps, eps_root, mu_dtype, weight_decay, mask,
                     nesterov=True)
    if eps_root != 0.0 or mu_dtype is not None:
        raise ValueError("eps_root, mu_dtype: expected the defaults with momentum_decay (torch's "
                         f"NAdam has neither), got eps_root={eps_root!r}, mu_dtype={mu_dtype!r}.")
    return chain(scale_by_nadam(b1, b2, eps, momentum_decay),
                 add_decayed_weights(weight_decay, mask), scale_by_learning_rate(learning_rate))


def noisy_sgd(learning_rate: ScalarOrSchedule, eta: float = 0.01, gamma: float = 0.55,
              key: int | torch.Tensor = 0) -> GradientTransformation:
    """SGD with annealed Gaussian gradient noise (`add_noise`, keyed by `functrain.random`).

    Args:
        learning_rate: a non-negative number or a schedule.
        eta: the initial noise variance.
        gamma: the variance's decay power.
        key: a `functrain.random` key or an int seed.

    Returns:
        A `GradientTransformation` (a `chain`).

    Example:
        >>> import torch
        >>> from functrain import optim
        >>> opt = optim.noisy_sgd(0.1, eta=0.0)
        >>> params = {"w": torch.tensor([1.0, -1.0])}
        >>> opt.update({"w": torch.tensor([0.5, -2.0])}, opt.init(params), params)[0]["w"]
        tensor([-0.0500,  0.2000])
    """
    return chain(add_noise(eta, gamma, key), scale_by_learning_rate(learning_rate))


def novograd(learning_rate: ScalarOrSchedule, b1: float = 0.9, b2: float = 0.25,
             eps: float = 1e-6, eps_root: float = 0.0,
             weight_decay: float = 0.0) -> GradientTransformation:
    """NovoGrad (Ginsburg et al., 2019): `scale_by_novograd` then the learning rate.

    Args:
        learning_rate: a non-negative number or a schedule.
        b1: momentum decay, in [0, 1).
        b2: decay of the per-leaf second moment, in [0, 1).
        eps: added to the denominator outside the root.
        eps_root: added inside the root.
        weight_decay: weight decay inside the momentum.

    Returns:
        A `GradientTransformation` (a `chain`).

    Example:
        >>> import torch
        >>> from functrain import optim
        >>> opt = optim.novograd(0.1)
        >>> params = {"w": torch.tensor([1.0, -1.0])}
        >>> opt.update({"w": torch.tensor([0.5, -2.0])}, opt.init(params), params)[0]["w"]
        tensor([-0.0243,  0.0970])
    """
    return chain(scale_by_novograd(b1, b2, eps, eps_root, weight_decay),
                 scale_by_learning_rate(learning_rate))


def optimistic_gradient_descent(learning_rate: ScalarOrSchedule, alpha: float = 1.0,
                                beta: float = 1.0) -> GradientTransformation:
    """Optimistic gradient descent (for min-max games): `scale_by_optimistic_gradient` then the
    learning rate.

    Args:
        learning_rate: a non-negative number or a schedule.
        alpha: weight of the current gradient.
        beta: weight of the gradient's change.

    Returns:
        A `GradientTransformation` (a `chain`).

    Example:
        >>> import torch
        >>> from functrain import optim
        >>> opt = optim.optimistic_gradient_descent(0.1)
        >>> params = {"w": torch.tensor([1.0, -1.0])}
        >>> opt.update({"w": torch.tensor([0.5, -2.0])}, opt.init(params), params)[0]["w"]
        tensor([-0.0500,  0.2000])
    """
    return chain(scale_by_optimistic_gradient(alpha, beta), scale_by_learning_rate(learning_rate))


def polyak_sgd(max_learning_rate: float = 1.0, scaling: ScalarOrSchedule = 1.0,
               f_min: float = 0.0, eps: float = 0.0, variant: str = "sps"
               ) -> GradientTransformation:
    """SGD with Polyak's step size: ``-scaling * min((f - f_min) / |g|^2, max_lr) * g``.

    The update needs the loss: ``opt.update(grads, state, params, value=loss)``.

    Args:
        max_learning_rate: the largest step size, >= 0.
        scaling: a multiplier (a number or a schedule).
        f_min: a lower bound of the loss.
        eps: added to ``|g|^2``.
        variant: ``"sps"`` or ``"sps+"``.

    Returns:
        A `GradientTransformation` (a `chain`) whose update takes ``value``.

    Example:
        >>> import torch
        >>> from functrain import optim
        >>> opt = optim.polyak_sgd()
        >>> params = {"w": torch.tensor([1.0, -1.0])}
        >>> opt.update({"w": torch.tensor([0.5, -2.0])}, opt.init(params), params,
        ...            value=torch.tensor(0.5))[0]["w"]
        tensor([-0.0588,  0.2353])
    """
    return chain(sgd(learning_rate=scaling),
                 scale_by_polyak(f_min, max_learning_rate, eps, variant))


def radam(learning_rate: ScalarOrSchedule, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8,
          eps_root: float = 0.0, threshold: float = 5.0, *,
          nesterov: bool = False) -> GradientTransformation:
    """RAdam (Liu et al., 2020): `scale_by_radam` then the learning rate.

    ``torch.optim.RAdam(lr, betas, eps=0)`` is ``radam(lr, b1, b2, eps=0)``: torch adds its
    ``eps`` to the uncorrected root (see `scale_by_radam`), so the two agree exactly only for
    ``eps=0`` (they differ by ~``eps / sqrt(nu)`` otherwise). torch's L2 ``weight_decay`` is
    `add_decayed_weights` chained before; its ``decoupled_weight_decay=True`` is
    ``chain(scale_by_radam(...), add_decayed_weights(wd), scale_by_learning_rate(lr))``.

    Args:
        learning_rate: a non-negative number or a schedule.
        b1: decay rate of the first moment, in [0, 1).
        b2: decay rate of the second moment, in [0, 1).
        eps: added to the denominator outside the square root.
        eps_root: added inside the square root.
        threshold: the ``rho_t`` from which the adaptive step is used.
        nesterov: use Nesterov momentum.

    Returns:
        A `GradientTransformation` (a `chain`).

    Example:
        >>> import torch
        >>> from functrain import optim
        >>> opt = optim.radam(0.1)
        >>> params = {"w": torch.tensor([1.0, -1.0])}
        >>> opt.update({"w": torch.tensor([0.5, -2.0])}, opt.init(params), params)[0]["w"]
        tensor([-0.0500,  0.2000])
    """
    return chain(scale_by_radam(b1, b2, eps, eps_root, threshold, nesterov=nesterov),
                 scale_by_learning_rate(learning_rate))


def rprop(learning_rate: float, eta_minus: float = 0.5, eta_plus: float = 1.2,
          min_step_size: float = 1e-6, max_step_size: float = 50.0) -> GradientTransformation:
    """Rprop (Riedmiller & Braun, 1993): sign steps with per-element adaptive sizes.

    ``torch.optim.Rprop(lr, etas=(eta_minus, eta_plus), step_sizes=(min, max))`` is the same
    math. (optax 0.2.8's ``rprop`` lags one step behind it: see `scale_by_rprop`.)

    Args:
        learning_rate: the initial step size, > 0.
        eta_minus: shrink factor, in (0, 1].
        eta_plus: growth factor, >= 1.
        min_step_size: smallest step size.
        max_step_size: largest step size.

    Returns:
        A `GradientTransformation` (a `chain`).

    Example:
        >>> import torch
        >>> from functrain import optim
        >>> opt = optim.rprop(0.1)
        >>> params = {"w": torch.tensor([1.0, -1.0])}
        >>> opt.update({"w": torch.tensor([0.5, -2.0])}, opt.init(params), params)[0]["w"]
        tensor([-0.1000,  0.1000])
    """
    return chain(scale_by_rprop(learning_rate, eta_minus, eta_plus, min_step_size,
                                max_step_size), scale(-1.0))


def sign_sgd(learning_rate: ScalarOrSchedule) -> GradientTransformation:
    """signSGD (Bernstein et al., 2018): steps of ``-learning_rate * sign(g)``.

    Args:
        learning_rate: a non-negative number or a schedule.

    Returns:
        A `GradientTransformation` (a `chain`).

    Example:
        >>> import torch
        >>> from functrain import optim
        >>> opt = optim.sign_sgd(0.1)
        >>> params = {"w": torch.tensor([1.0, -1.0])}
        >>> opt.update({"w": torch.tensor([0.5, -2.0])}, opt.init(params), params)[0]["w"]
        tensor([-0.1000,  0.1000])
    """
    return chain(scale_by_sign(), scale_by_learning_rate(learning_rate))


def signum(learning_rate: ScalarOrSchedule, beta: float = 0.9,
           accumulator_dtype: torch.dtype | None = None) -> GradientTransformation:
    """Signum (Bernstein et al., 2018): the sign of a (non-debiased) momentum.

    Args:
        learning_rate: a non-negative number or a schedule.
        beta: the momentum decay, in [0, 1).
        accumulator_dtype: dtype of the momentum.

    Returns:
        A `GradientTransformation` (a `chain`).

    Example:
        >>> import torch
        >>> from functrain import optim
        >>> opt = optim.signum(0.1)
        >>> params = {"w": torch.tensor([1.0, -1.0])}
        >>> opt.update({"w": torch.tensor([0.5, -2.0])}, opt.init(params), params)[0]["w"]
        tensor([-0.1000,  0.1000])
    """
    return chain(ema(beta, debias=False, accumulator_dtype=accumulator_dtype), scale_by_sign(),
                 scale_by_learning_rate(learning_rate))


def sm3(learning_rate: float, momentum: float = 0.9) -> GradientTransformation:
    """SM3 (Anil et al., 2019): `scale_by_sm3` then ``-learning_rate``.

    Args:
        learning_rate: a non-negative number.
        momentum: the momentum decay, in [0, 1).

    Returns:
        A `GradientTransformation` (a `chain`).

    Example:
        >>> import torch
        >>> from functrain import optim
        >>> opt = optim.sm3(0.1)
        >>> params = {"w": torch.tensor([1.0, -1.0])}
        >>> opt.update({"w": torch.tensor([0.5, -2.0])}, opt.init(params), params)[0]["w"]
        tensor([-0.0100,  0.0100])
    """
    _checks.non_negative("learning_rate", learning_rate)
    return chain(scale_by_sm3(momentum), scale(-learning_rate))


def yogi(learning_rate: ScalarOrSchedule, b1: float = 0.9, b2: float = 0.999,
         eps: float = 1e-3) -> GradientTransformation:
    """Yogi (Zaheer et al., 2018): `scale_by_yogi` then the learning rate.

    Args:
        learning_rate: a non-negative number or a schedule.
        b1: decay rate of the first moment, in [0, 1).
        b2: rate of the second moment's change, in [0, 1).
        eps: added to the denominator.

    Returns:
        A `GradientTransformation` (a `chain`).

    Example:
        >>> import torch
        >>> from functrain import optim
        >>> opt = optim.yogi(0.1)
        >>> params = {"w": torch.tensor([1.0, -1.0])}
        >>> opt.update({"w": torch.tensor([0.5, -2.0])}, opt.init(params), params)[0]["w"]
        tensor([-0.0996,  0.0999])
    """
    return chain(scale_by_yogi(b1, b2, eps), scale_by_learning_rate(learning_rate))


def asgd(learning_rate: float = 1e-2, lambd: float = 1e-4, alpha: float = 0.75, t0: float = 1e6,
         weight_decay: float = 0.0) -> GradientTransformation:
    """Averaged SGD, ``torch.optim.ASGD``'s arguments, defaults and math (optax has none).

    The averaged params (what to evaluate with) are in the state: `averaged_params` finds them.

    Args:
        learning_rate: torch's ``lr``.
        lambd: the decay term.
        alpha: the power of the step-size decay.
        t0: the step from which averaging starts.
        weight_decay: L2 weight decay added to the gradient.

    Returns:
        A `GradientTransformation` (a `chain` ending in `scale_by_asgd`).

    Example:
        >>> import torch
        >>> from functrain import optim
        >>> opt = optim.asgd(0.1)
        >>> params = {"w": torch.tensor([1.0, -1.0])}
        >>> opt.update({"w": torch.tensor([0.5, -2.0])}, opt.init(params), params)[0]["w"]
        tensor([-0.0500,  0.2000])
    """
    return chain(add_decayed_weights(weight_decay), scale_by_asgd(learning_rate, lambd, alpha, t0))
