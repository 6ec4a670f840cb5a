"""Adam's relatives: Adamax, AMSGrad, AdaBelief, Yogi, RAdam, torch's NAdam, Adan, ADOPT and
AdEMAMix, each as optax (or optax.contrib) defines it.

Each is a transformation without the learning rate (see the aliases in ``_families.py``);
states are NamedTuples with a 0-d int64 step count, and every update keeps its leaf's dtype.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import torch

from . import _checks
from ._adaptive import ScaleByAdamState, adam_state_init, next_count
from ._base import GradientTransformation, Params, Updates, zero_count
from ._transforms import BiasCorrections, moment, moment_sq, per_leaf, zeros


def _wide(dtype: torch.dtype) -> torch.dtype:
    return torch.promote_types(dtype, torch.float32)


def scalar_dtype(params: Params) -> torch.dtype:
    """float64 if any param is float64, else float32: the dtype of per-step scalars."""
    from functrain import tree as _tree
    dtypes = {x.dtype for x in _tree.leaves(params) if isinstance(x, torch.Tensor)}
    return torch.float64 if torch.float64 in dtypes else torch.float32


def _value(x: Any, count: torch.Tensor) -> Any:
    """A hyperparameter that may be a schedule of ``count``."""
    return x(count) if callable(x) and not isinstance(x, torch.Tensor) else x


# ---------------------------------------------------------------------------------------------


def scale_by_adamax(b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8
                    ) -> GradientTransformation:
    """Adamax (Kingma & Ba, 2014): Adam with an infinity-norm second moment.

    ``nu = max(b2 * nu, |g| + eps)``; ``update = mu_hat / nu``. Exactly
    ``torch.optim.Adamax``'s math (same arguments, ``betas=(b1, b2)``).

    Args:
        b1: decay rate of the first moment, in [0, 1).
        b2: decay rate of the infinity norm, in [0, 1).
        eps: added to ``|g|``, >= 0.

    Returns:
        A `GradientTransformation` with `ScaleByAdamState`.

    Example:
        >>> import torch
        >>> from functrain import optim
        >>> opt = optim.scale_by_adamax(eps=0.0)
        >>> updates, _ = opt.update({"w": torch.tensor([-4.0])}, opt.init({"w": torch.zeros(1)}))
        >>> updates["w"]
        tensor([-1.0000])
    """
    _checks.beta("b1", b1)
    _checks.beta("b2", b2)
    _checks.non_negative("eps", eps)

    init_fn = adam_state_init()

    def update_fn(updates: Updates, state: ScaleByAdamState, params: Params | None = None):
        count, bc = next_count(updates, state, params)

        def one(g, m, v):
            m_new = moment(g, m, b1)
            v_new = torch.maximum(g.abs() + eps, v * b2)
            u = (m_new * bc.inverse("b1", b1, m_new.dtype)) / v_new
            return u.to(g.dtype), m_new.to(m.dtype), v_new.to(v.dtype)

        u, mu, nu = per_leaf(one, updates, state.mu, state.nu)
        return u, ScaleByAdamState(count=count, mu=mu, nu=nu)

    return GradientTransformation(init_fn, update_fn)


class ScaleByAmsgradState(NamedTuple):
    """State of `scale_by_amsgrad`: ``count``, moments ``mu``, ``nu`` and the running maximum
    ``nu_max`` of the (bias-corrected) second moment.

    Example:
        >>> import torch
        >>> from functrain import optim
        >>> optim.scale_by_amsgrad().init({"w": torch.zeros(1)})._fields
        ('count', 'mu', 'nu', 'nu_max')
    """

    count: torch.Tensor
    mu: Updates
    nu: Updates
    nu_max: Updates


def scale_by_amsgrad(b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8,
                     eps_root: float = 0.0, mu_dtype: torch.dtype | None = None,
                     bias_correction_mu: bool = True, bias_correction_nu: bool = True
                     ) -> GradientTransformation:
    """AMSGrad (Reddi et al., 2018): Adam dividing by the running maximum of the second moment.

    optax's form: the maximum is taken of the bias-corrected ``nu``. (``torch.optim.Adam(
    amsgrad=True)`` takes it of the raw ``nu`` and corrects afterwards, a different method.)

    Args:
        b1: decay rate of the first moment, in [0, 1).
        b2: decay rate of the second moment, in [0, 1).
        eps: added to the denominator outside the square root, >= 0.
        eps_root: added inside the square root, >= 0.
        mu_dtype: dtype of the first moment (``None``: the params' dtype).
        bias_correction_mu: bias-correct the first moment.
        bias_correction_nu: bias-correct the second moment.

    Returns:
        A `GradientTransformation` with `ScaleByAmsgradState`.

    Example:
        >>> import torch
        >>> from functrain import optim
        >>> opt = optim.scale_by_amsgrad(eps=0.0)
        >>> updates, _ = opt.update({"w": torch.tensor([3.0])}, opt.init({"w": torch.zeros(1)}))
        >>> updates["w"]
        tensor([1.0000])
    """
    _checks.beta("b1", b1)
    _checks.beta("b2", b2)
    _checks.non_negative("eps", eps)
    _checks.non_negative("eps_root", eps_root)
    _checks.dtype_or_none("mu_dtype", mu_dtype)

    def init_fn(params: Params) -> ScaleByAmsgradState:
        _checks.float_leaves(params, "params")
        return ScaleByAmsgradState(count=zero_count(params), mu=zeros(params, mu_dtype),
                                   nu=zeros(params), nu_max=zeros(params))

    def update_fn(updates: Updates, state: ScaleByAmsgradState, params: Params | None = None):
        count, bc = next_count(updates, state, params)

        def one(g, m, v, vmax):
            m_new = moment(g, m, b1)
            v_new = moment_sq(g, v, b2)
            m_hat = m_new * bc.inverse("b1", b1, m_new.dtype) if bias_correction_mu else m_new
            v_hat = v_new * bc.inverse("b2", b2, v_new.dtype) if bias_correction_nu else v_new
            vmax_new = torch.maximum(vmax, v_hat)
            u = m_hat / ((vmax_new + eps_root).sqrt() + eps)
            return u.to(g.dtype), m_new.to(m.dtype), v_new.to(v.dtype), vmax_new.to(vmax.dtype)

        u, mu, nu, nu_max = per_leaf(one, updates, state.mu, state.nu, state.nu_max)
        return u, ScaleByAmsgradState(count=count, mu=mu, nu=nu, nu_max=nu_max)

    return GradientTransformation(init_fn, update_fn)


class ScaleByBeliefState(NamedTuple):
    """State of `scale_by_belief`: ``count``, the first moment ``mu`` and the second moment
    ``nu`` of the prediction error ``g - mu``.

    Example:
        >>> import torch
        >>> from functrain import optim
        >>> optim.scale_by_belief().init({"w": torch.zeros(1)})._fields
        ('count', 'mu', 'nu')
    """

    count: torch.Tensor
    mu: Updates
    nu: Updates


def _nesterov_hat(g, m_new, b1, bc, dtype):
    """optax's Nesterov first moment: ``b1 * m / (1 - b1**(t+1)) + (1 - b1) * g / (1 - b1**t)``.
    """
    return ((m_new * b1) * bc.inverse("b1", b1, dtype, offset=1)
            + (g * (1 - b1)) * bc.inverse("b1", b1, dtype))


def scale_by_belief(b1: float = 0.9, b2: float = 0.999, eps: float = 1e-16,
                    eps_root: float = 1e-16, *, nesterov: bool = False) -> GradientTransformation:
    """AdaBelief (Zhuang et al., 2020): Adam whose second moment tracks ``(g - mu)**2``.

    Args:
        b1: decay rate of the first moment, in [0, 1).
        b2: decay rate of the second moment, in [0, 1).
        eps: added to the denominator outside the square root, >= 0.
        eps_root: added to the second moment at every step, >= 0.
        nesterov: use Nesterov momentum.

    Returns:
        A `GradientTransformation` with `ScaleByBeliefState`.

    Example:
        >>> import torch
        >>> from functrain import optim
        >>> opt = optim.scale_by_belief()
        >>> updates, _ = opt.update({"w": torch.tensor([2.0])}, opt.init({"w": torch.zeros(1)}))
        >>> updates["w"]  # mu_hat = 2, nu_hat = (2 - 0.2)**2
        tensor([1.1111])
    """
    _checks.beta("b1", b1)
    _checks.beta("b2", b2)
    _checks.non_negative("eps", eps)
    _checks.non_negative("eps_root", eps_root)

    def init_fn(params: Params) -> ScaleByBeliefState:
        _checks.float_leaves(params, "params")
        return ScaleByBeliefState(count=zero_count(params), mu=zeros(params), nu=zeros(params))

    def update_fn(updates: Updates, state: ScaleByBeliefState, params: Params | None = None):
        count, bc = next_count(updates, state, params)

        def one(g, m, v):
            m_new = moment(g, m, b1)
            err = g - m_new
            v_new = moment_sq(err, v, b2) + eps_root
            m_hat = (_nesterov_hat(g, m_new, b1, bc, m_new.dtype) if nesterov
                     else m_new * bc.inverse("b1", b1, m_new.dtype))
            u = m_hat / ((v_new * bc.inverse("b2", b2, v_new.dtype)).sqrt() + eps)
            return u.to(g.dtype), m_new.to(m.dtype), v_new.to(v.dtype)

        u, mu, nu = per_leaf(one, updates, state.mu, state.nu)
        return u, ScaleByBeliefState(count=count, mu=mu, nu=nu)

    return GradientTransformation(init_fn, update_fn)


def scale_by_yogi(b1: float = 0.9, b2: float = 0.999, eps: float = 1e-3, eps_root: float = 0.0,
                  initial_accumulator_value: float = 1e-6) -> GradientTransformation:
    """Yogi (Zaheer et al., 2018): Adam with an additive, sign-controlled second moment.

    ``nu = nu - (1 - b2) * sign(nu - g**2) * g**2``; both moments start at
    ``initial_accumulator_value``.

    Args:
        b1: decay rate of the first moment, in [0, 1).
        b2: rate of the second moment's change, in [0, 1).
        eps: added to the denominator outside the square root, >= 0.
        eps_root: added inside the square root, >= 0.
        initial_accumulator_value: starting value of both moments.

    Returns:
        A `GradientTransformation` with `ScaleByAdamState`.

    Example:
        >>> import torch
        >>> from functrain import optim
        >>> optim.scale_by_yogi().init({"w": torch.zeros(1)}).nu
        {'w': tensor([1.0000e-06])}
    """
    _checks.beta("b1", b1)
    _checks.beta("b2", b2)
    _checks.non_negative("eps", eps)
    _checks.non_negative("eps_root", eps_root)
    _checks.number("initial_accumulator_value", initial_accumulator_value)

    init_fn = adam_state_init(fill=initial_accumulator_value)

    def update_fn(updates: Updates, state: ScaleByAdamState, params: Params | None = None):
        count, bc = next_count(updates, state, params)

        def one(g, m, v):
            m_new = moment(g, m, b1)
            g2 = g * g
            v_new = v - (1 - b2) * torch.sign(v - g2) * g2
            u = (m_new * bc.inverse("b1", b1, m_new.dtype)) / (
                (v_new * bc.inverse("b2", b2, v_new.dtype) + eps_root).sqrt() + eps)
            return u.to(g.dtype), m_new.to(m.dtype), v_new.to(v.dtype)

        u, mu, nu = per_leaf(one, updates, state.mu, state.nu)
        return u, ScaleByAdamState(count=count, mu=mu, nu=nu)

    return GradientTransformation(init_fn, update_fn)


def scale_by_radam(b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8, eps_root: float = 0.0,
                   threshold: float = 5.0, *, nesterov: bool = False) -> GradientTransformation:
    """RAdam (Liu et al., 2020): Adam whose adaptive step is rectified, and skipped while the
    variance estimate is unreliable (``rho_t < threshold``: plain momentum then).

    ``torch.optim.RAdam`` applies ``eps`` as ``sqrt(1 - b2**t) / (sqrt(nu) + eps)``, optax (and
    this) as ``1 / (sqrt(nu_hat) + eps)``; with ``eps=0`` the two agree. torch's
    ``decoupled_weight_decay=True`` is ``chain(scale_by_radam(), add_decayed_weights(wd),
    scale_by_learning_rate(lr))``.

    Args:
        b1: decay rate of the first moment, in [0, 1).
        b2: decay rate of the second moment, in [0, 1).
        eps: added to the denominator outside the square root, >= 0.
        eps_root: added inside the square root, >= 0.
        threshold: the ``rho_t`` from which the adaptive step is used.
        nesterov: use Nesterov momentum.

    Returns:
        A `GradientTransformation` with `ScaleByAdamState`.

    Example:
        >>> import torch
        >>> from functrain import optim
        >>> opt = optim.scale_by_radam()
        >>> updates, _ = opt.update({"w": torch.tensor([3.0])}, opt.init({"w": torch.zeros(1)}))
        >>> updates["w"]  # early steps: the bias-corrected momentum itself
        tensor([3.0000])
    """
    _checks.beta("b1", b1)
    _checks.beta("b2", b2)
    _checks.non_negative("eps", eps)
    _checks.non_negative("eps_root", eps_root)
    _checks.number("threshold", threshold)
    ro_inf = 2.0 / (1.0 - b2) - 1.0

    init_fn = adam_state_init()

    def update_fn(updates: Updates, state: ScaleByAdamState, params: Params | None = None):
        count, bc = next_count(updates, state, params)
        rect: dict[torch.dtype, tuple[torch.Tensor, torch.Tensor]] = {}

        def rectifier(dtype):
            dt = _wide(dtype)
            if dt not in rect:
                c = count.to(dt)
                b2t = torch.pow(torch.as_tensor(b2, dtype=dt, device=c.device), c)
                ro = ro_inf - 2 * c * b2t / (1 - b2t)
                r = torch.sqrt((ro - 4.0) * (ro - 2.0) * ro_inf
                               / ((ro_inf - 4.0) * (ro_inf - 2.0) * ro))
                rect[dt] = (ro >= threshold, r)
            return rect[dt]

        def one(g, m, v):
            m_new = moment(g, m, b1)
            v_new = moment_sq(g, v, b2)
            m_hat = (_nesterov_hat(g, m_new, b1, bc, m_new.dtype) if nesterov
                     else m_new * bc.inverse("b1", b1, m_new.dtype))
            use, r = rectifier(m_new.dtype)
            v_hat = v_new * bc.inverse("b2", b2, v_new.dtype)
            adaptive = r * m_hat / ((v_hat + eps_root).sqrt() + eps)
            u = torch.where(use, adaptive, m_hat)
            return u.to(g.dtype), m_new.to(m.dtype), v_new.to(v.dtype)

        u, mu, nu = per_leaf(one, updates, state.mu, state.nu)
        return u, ScaleByAdamState(count=count, mu=mu, nu=nu)

    return GradientTransformation(init_fn, update_fn)


class ScaleByNadamState(NamedTuple):
    """State of `scale_by_nadam`: ``count``, the running product ``mu_product`` of the momentum
    schedule (a 0-d float tensor), and the moments ``mu`` and ``nu``.

    Example:
        >>> import torch
        >>> from functrain import optim
        >>> optim.scale_by_nadam().init({"w": torch.zeros(1)}).mu_product
        tensor(1.)
    """

    count: torch.Tensor
    mu_product: torch.Tensor
    mu: Updates
    nu: Updates


def scale_by_nadam(b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8,
                   momentum_decay: float = 4e-3) -> GradientTransformation:
    """``torch.optim.NAdam``'s rule (Dozat, 2016), with its momentum-decay schedule.

    The momentum coefficient at step t is ``mu_t = b1 * (1 - 0.5 * 0.96**(t *
    momentum_decay))``; the update is ``(1 - mu_t) / (1 - prod mu) * g / denom + mu_{t+1} /
    (1 - prod mu * mu_{t+1}) * m / denom`` with ``denom = sqrt(nu_hat) + eps``. (optax's
    `nadam` is `adam` with ``nesterov=True``, which has no such schedule.)

    Args:
        b1: decay rate of the first moment, in [0, 1).
        b2: decay rate of the second moment, in [0, 1).
        eps: added to the denominator, >= 0.
        momentum_decay: torch's ``momentum_decay`` (psi), >= 0.

    Returns:
        A `GradientTransformation` with `ScaleByNadamState`.

    Example:
        >>> import torch
        >>> from functrain import optim
        >>> opt = optim.scale_by_nadam(eps=0.0)
        >>> updates, _ = opt.update({"w": torch.tensor([2.0])}, opt.init({"w": torch.zeros(1)}))
        >>> round(updates["w"].item(), 4)
        1.0564
    """
    _checks.beta("b1", b1)
    _checks.beta("b2", b2)
    _checks.non_negative("eps", eps)
    _checks.non_negative("momentum_decay", momentum_decay)

    def init_fn(params: Params) -> ScaleByNadamState:
        _checks.float_leaves(params, "params")
        count = zero_count(params)
        return ScaleByNadamState(
            count=count, mu_product=torch.ones((), dtype=scalar_dtype(params),
                                               device=count.device),
            mu=zeros(params), nu=zeros(params))

    def update_fn(updates: Updates, state: ScaleByNadamState, params: Params | None = None):
        count, bc = next_count(updates, state, params)
        c = count.to(state.mu_product.dtype)
        mu_t = b1 * (1.0 - 0.5 * torch.exp(c * momentum_decay * math.log(0.96)))
        mu_next = b1 * (1.0 - 0.5 * torch.exp((c + 1) * momentum_decay * math.log(0.96)))
        mu_product = state.mu_product * mu_t
        coef_g = (1.0 - mu_t) / (1.0 - mu_product)
        coef_m = mu_next / (1.0 - mu_product * mu_next)

        def one(g, m, v):
            m_new = moment(g, m, b1)
            v_new = moment_sq(g, v, b2)
            denom = (v_new * bc.inverse("b2", b2, v_new.dtype)).sqrt_().add_(eps)
            u = (g * coef_g.to(g.dtype) + m_new * coef_m.to(m_new.dtype)) / denom
            return u.to(g.dtype), m_new.to(m.dtype), v_new.to(v.dtype)

        u, mu, nu = per_leaf(one, updates, state.mu, state.nu)
        return u, ScaleByNadamState(count=count, mu_product=mu_product, mu=mu, nu=nu)

    return GradientTransformation(init_fn, update_fn)


class ScaleByAdanState(NamedTuple):
    """State of `scale_by_adan`: moments ``m`` (gradient), ``v`` (gradient difference), ``n``
    (squared corrected gradient), the previous gradient ``g`` and the step count ``t``.

    Example:
        >>> import torch
        >>> from functrain import optim
        >>> optim.scale_by_adan().init({"w": torch.zeros(1)})._fields
        ('m', 'v', 'n', 'g', 't')
    """

    m: Updates
    v: Updates
    n: Updates
    g: Updates
    t: torch.Tensor


def scale_by_adan(b1: float = 0.98, b2: float = 0.92, b3: float = 0.99, eps: float = 1e-8,
                  eps_root: float = 0.0) -> GradientTransformation:
    """Adan (Xie et al., 2022): adaptive Nesterov momentum from gradient differences.

    Args:
        b1: decay rate of the gradient moment, in [0, 1).
        b2: decay rate of the gradient-difference moment, in [0, 1).
        b3: decay rate of the second moment, in [0, 1).
        eps: added to the denominator outside the square root, >= 0.
        eps_root: added inside the square root, >= 0.

    Returns:
        A `GradientTransformation` with `ScaleByAdanState`.

    Example:
        >>> import torch
        >>> from functrain import optim
        >>> opt = optim.scale_by_adan(eps=0.0)
        >>> updates, _ = opt.update({"w": torch.tensor([2.0])}, opt.init({"w": torch.zeros(1)}))
        >>> updates["w"]
        tensor([1.0000])
    """
    for name, b in (("b1", b1), ("b2", b2), ("b3", b3)):
        _checks.beta(name, b)
    _checks.non_negative("eps", eps)
    _checks.non_negative("eps_root", eps_root)

    def init_fn(params: Params) -> ScaleByAdanState:
        _checks.float_leaves(params, "params")
        return ScaleByAdanState(m=zeros(params), v=zeros(params), n=zeros(params),
                                g=zeros(params), t=zero_count(params))

    def update_fn(updates: Updates, state: ScaleByAdanState, params: Params | None = None):
        _checks.update_inputs(updates, params)
        _checks.updates(updates, state.m, dtype=False, ref_name="state.m")
        first = state.t == 0
        t = state.t + 1
        bc = BiasCorrections(t)

        def one(g, m, v, n, g_prev):
            diff = torch.where(first, 0.0, g - g_prev)
            m_new = moment(g, m, b1)
            v_new = moment(diff, v, b2)
            n_new = moment_sq(g + (1 - b2) * diff, n, b3)
            m_hat = m_new * bc.inverse("b1", b1, m_new.dtype)
            v_hat = v_new * bc.inverse("b2", b2, v_new.dtype)
            n_hat = n_new * bc.inverse("b3", b3, n_new.dtype)
            u = (m_hat + (1 - b2) * v_hat) / ((n_hat + eps_root).sqrt() + eps)
            return (u.to(g.dtype), m_new.to(m.dtype), v_new.to(v.dtype), n_new.to(n.dtype),
                    g.to(g_prev.dtype))

        u, m, v, n, g = per_leaf(one, updates, state.m, state.v, state.n, state.g)
        return u, ScaleByAdanState(m=m, v=v, n=n, g=g, t=t)

    return GradientTransformation(init_fn, update_fn)


def scale_by_adopt(b1: float = 0.9, b2: float = 0.9999, eps: float = 1e-6,
                   mu_dtype: torch.dtype | None = None, *, nesterov: bool = False,
                   use_clipping: bool = True,
                   clip_value_fn: Callable[[torch.Tensor], Any] = lambda x: x**0.25
                   ) -> GradientTransformation:
    """ADOPT (Taniguchi et al., 2024), as optax.contrib has it: normalize the gradient by the
    *previous* second moment, then take momentum of that (optionally clipped to
    ``clip_value_fn(count)``). The first step only initializes ``nu`` (its update is 0).

    Args:
        b1: decay rate of the momentum, in [0, 1).
        b2: decay rate of the second moment, in [0, 1).
        eps: floor of ``sqrt(nu)`` in the normalization, >= 0.
        mu_dtype: dtype of the momentum (``None``: the params' dtype).
        nesterov: use Nesterov momentum.
        use_clipping: clip the normalized gradient.
        clip_value_fn: the clipping bound as a function of the 0-d step count.

    Returns:
        A `GradientTransformation` with `ScaleByAdamState`.

    Example:
        >>> import torch
        >>> from functrain import optim
        >>> opt = optim.scale_by_adopt()
        >>> state = opt.init({"w": torch.zeros(1)})
        >>> for g in (2.0, 2.0):
        ...     updates, state = opt.update({"w": torch.tensor([g])}, state)
        >>> updates["w"]  # 0.1 * clip(2 / 2, 1)
        tensor([0.1000])
    """
    _checks.beta("b1", b1)
    _checks.beta("b2", b2)
    _checks.non_negative("eps", eps)
    _checks.dtype_or_none("mu_dtype", mu_dtype)

    init_fn = adam_state_init(mu_dtype)

    def update_fn(updates: Updates, state: ScaleByAdamState, params: Params | None = None):
        _checks.update_inputs(updates, params)
        _checks.updates(updates, state.nu, dtype=False, ref_name="state.nu")
        started = state.count > 0
        clip = clip_value_fn(state.count) if use_clipping else None

        def one(g, m, v):
            b2_ = torch.where(started, b2, 0.0).to(_wide(v.dtype))
            b1_ = torch.where(started, b1, 1.0).to(_wide(m.dtype))
            v_new = (1 - b2_) * (g * g) + b2_ * v
            normed = g / torch.clamp(v.sqrt(), min=eps)
            if use_clipping:
                bound = torch.as_tensor(clip, device=g.device).to(normed.dtype)
                normed = torch.clamp(normed, -bound, bound)
            m_new = (1 - b1_) * normed + b1_ * m
            u = (1 - b1_) * normed + b1_ * m_new if nesterov else m_new
            return u.to(g.dtype), m_new.to(m.dtype), v_new.to(v.dtype)

        u, mu, nu = per_leaf(one, updates, state.mu, state.nu)
        return u, ScaleByAdamState(count=state.count + 1, mu=mu, nu=nu)

    return GradientTransformation(init_fn, update_fn)


class ScaleByAdemamixState(NamedTuple):
    """State of `scale_by_ademamix`: step counts ``count`` and ``count_m2``, the fast and slow
    momenta ``m1`` and ``m2``, and the second moment ``nu``.

    Example:
        >>> import torch
        >>> from functrain import optim
        >>> optim.scale_by_ademamix().init({"w": torch.zeros(1)})._fields
        ('count', 'count_m2', 'm1', 'm2', 'nu')
    """

    count: torch.Tensor
    count_m2: torch.Tensor
    m1: Updates
    m2: Updates
    nu: Updates


def scale_by_ademamix(b1: float = 0.9, b2: float = 0.999, b3: Any = 0.9999, alpha: Any = 6.0,
                      eps: float = 1e-8, eps_root: float = 0.0,
                      mu_dtype: torch.dtype | None = None) -> GradientTransformation:
    """AdEMAMix (Pagliardini et al., 2024): Adam plus a slow momentum ``m2`` weighted by
    ``alpha``: ``(m1_hat + alpha * m2) / (sqrt(nu_hat) + eps)``.

    Args:
        b1: decay rate of the fast momentum, in [0, 1).
        b2: decay rate of the second moment, in [0, 1).
        b3: decay rate of the slow momentum: a number in [0, 1) or a schedule of
            ``count_m2`` (the paper warms it up).
        alpha: weight of the slow momentum: a number or a schedule of ``count_m2``.
        eps: added to the denominator outside the square root, >= 0.
        eps_root: added inside the square root, >= 0.
        mu_dtype: dtype of the momenta and ``nu`` (``None``: the params' dtype).

    Returns:
        A `GradientTransformation` with `ScaleByAdemamixState`.

    Example:
        >>> import torch
        >>> from functrain import optim
        >>> opt = optim.scale_by_ademamix(alpha=0.0, eps=0.0)
        >>> updates, _ = opt.update({"w": torch.tensor([2.0])}, opt.init({"w": torch.zeros(1)}))
        >>> updates["w"]
        tensor([1.0000])
    """
    _checks.beta("b1", b1)
    _checks.beta("b2", b2)
    if not callable(b3):
        _checks.beta("b3", b3)
    if not callable(alpha):
        _checks.number("alpha", alpha)
    _checks.non_negative("eps", eps)
    _checks.non_negative("eps_root", eps_root)
    _checks.dtype_or_none("mu_dtype", mu_dtype)

    def init_fn(params: Params) -> ScaleByAdemamixState:
        _checks.float_leaves(params, "params")
        return ScaleByAdemamixState(count=zero_count(params), count_m2=zero_count(params),
                                    m1=zeros(params, mu_dtype), m2=zeros(params, mu_dtype),
                                    nu=zeros(params, mu_dtype))

    def update_fn(updates: Updates, state: ScaleByAdemamixState, params: Params | None = None):
        _checks.update_inputs(updates, params)
        _checks.updates(updates, state.nu, dtype=False, ref_name="state.nu")
        c_b3 = _value(b3, state.count_m2)
        c_alpha = _value(alpha, state.count_m2)
        count = state.count + 1
        bc = BiasCorrections(count)

        def one(g, m1, m2, v):
            m1_new = moment(g, m1, b1)
            m2_new = (g * (1 - c_b3)) + m2 * c_b3
            v_new = moment_sq(g, v, b2)
            m1_hat = m1_new * bc.inverse("b1", b1, m1_new.dtype)
            v_hat = v_new * bc.inverse("b2", b2, v_new.dtype)
            u = (m1_hat + c_alpha * m2_new) / ((v_hat + eps_root).sqrt() + eps)
            return u.to(g.dtype), m1_new.to(m1.dtype), m2_new.to(m2.dtype), v_new.to(v.dtype)

        u, m1, m2, nu = per_leaf(one, updates, state.m1, state.m2, state.nu)
        return u, ScaleByAdemamixState(count=count, count_m2=state.count_m2 + 1, m1=m1,
                                       m2=m2, nu=nu)

    return GradientTransformation(init_fn, update_fn)
