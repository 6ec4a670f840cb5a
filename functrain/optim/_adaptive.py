"""Adaptive rescaling: Adam, RMS (RMSprop), standard deviation (centred RMSprop), Adagrad's sum
of squares, Lion.

Each follows optax's math and defaults; the learning rate is applied separately (see
`scale_by_learning_rate` and the aliases in ``_alias.py``). Where ``torch.optim`` differs, the
docstring says how to map the arguments.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch

from . import _checks, _foreach
from ._base import GradientTransformation, Params, Updates, zero_count
from ._transforms import BiasCorrections, is_number, moment, moment_sq, per_leaf, zeros

# ---------------------------------------------------------------------------------------------
# Adam.


class ScaleByAdamState(NamedTuple):
    """State of `scale_by_adam`: step ``count`` (0-d int64), first and second moments.

    Example:
        >>> import torch
        >>> from functrain import optim
        >>> optim.scale_by_adam().init({"w": torch.zeros(2)})
        ScaleByAdamState(count=tensor(0), mu={'w': tensor([0., 0.])}, nu={'w': tensor([0., 0.])})
    """

    count: torch.Tensor
    mu: Updates
    nu: Updates


def adam_state_init(mu_dtype: torch.dtype | None = None, fill: float = 0.0) -> Any:
    """The ``init`` of an Adam-like transform: a zero step count and moments ``mu`` (in
    ``mu_dtype``, default the params') and ``nu`` shaped like the params, filled with ``fill``."""

    def init_fn(params: Params) -> ScaleByAdamState:
        _checks.float_leaves(params, "params")
        return ScaleByAdamState(count=zero_count(params), mu=zeros(params, mu_dtype, fill=fill),
                                nu=zeros(params, fill=fill))

    return init_fn


def next_count(updates: Updates, state: Any, params: Params | None) -> tuple[Any, Any]:
    """Check ``updates`` against ``params`` and the second moment ``state.nu``; return the
    step count after this update and its `BiasCorrections` (the start of every Adam-like
    update)."""
    _checks.update_inputs(updates, params)
    _checks.updates(updates, state.nu, dtype=False, ref_name="state.nu")
    count = state.count + 1
    return count, BiasCorrections(count)


def scale_by_adam(
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    eps_root: float = 0.0,
    mu_dtype: torch.dtype | None = None,
    *,
    nesterov: bool = False,
) -> GradientTransformation:
    """Rescale updates by Adam's bias-corrected moments (Kingma & Ba, 2014).

    ``update = mu_hat / (sqrt(nu_hat + eps_root) + eps)``. The learning rate is applied
    separately (see `adam`). ``nesterov=True`` gives NAdam as optax writes it (which differs
    from ``torch.optim.NAdam``'s momentum-decay schedule); AMSGrad is not part of this
    transformation (``torch.optim.Adam(amsgrad=True)`` has no counterpart here).

    Args:
        b1: decay rate of the first moment, in [0, 1).
        b2: decay rate of the second moment, in [0, 1).
        eps: added to the denominator outside the square root, >= 0.
        eps_root: added to the second moment inside the square root, >= 0.
        mu_dtype: dtype of the first moment (``None``: the params' dtype).
        nesterov: use Nesterov momentum.

    Returns:
        A `GradientTransformation` with `ScaleByAdamState`.

    Raises:
        ValueError: if a decay rate is outside [0, 1) or ``eps`` / ``eps_root`` is negative.

    Example:
        >>> import torch
        >>> from functrain import optim
        >>> opt = optim.scale_by_adam()
        >>> state = opt.init({"w": torch.zeros(2)})
        >>> updates, state = opt.update({"w": torch.tensor([0.1, -3.0])}, state)
        >>> updates["w"]  # the first Adam step is sign(g), up to eps
        tensor([ 1.0000, -1.0000])
    """
    _checks.beta("b1", b1)
    _checks.beta("b2", b2)
    _checks.non_negative("eps", eps)
    _checks.non_negative("eps_root", eps_root)
    _checks.dtype_or_none("mu_dtype", mu_dtype)
    add_eps_root = isinstance(eps_root, torch.Tensor) or eps_root != 0
    # Eagerly, plain Adam over leaves of one dtype runs as foreach ops (`_foreach`): same bits.
    foreach = not nesterov and all(is_number(h) for h in (b1, b2, eps, eps_root))

    init_fn = adam_state_init(mu_dtype)

    def update_fn(updates: Updates, state: ScaleByAdamState, params: Params | None = None):
        fast = foreach and _foreach.leaves(updates, state.mu, state.nu,
                                           *(() if params is None else (params,)))
        if fast:  # (its checks imply next_count's)
            (gs, ms, vs, *_), specs = fast
            count = state.count + 1
            corrections = BiasCorrections(count)
            dt = gs[0].dtype
            u, mu, nu = _foreach.adam(gs, ms, vs, b1, b2, eps, eps_root,
                                      corrections.inverse("b1", b1, dt),
                                      corrections.inverse("b2", b2, dt))
            return _foreach.unflatten(specs[0], u), ScaleByAdamState(
                count=count, mu=_foreach.unflatten(specs[1], mu),
                nu=_foreach.unflatten(specs[2], nu))
        count, corrections = next_count(updates, state, params)

        def one(g, m, v):
            m_new = moment(g, m, b1)
            v_new = moment_sq(g, v, b2)
            # Multiplying by 1 / (1 - b**t), a per-step scalar, leaves one vector division per
            # element (m_hat / denom) in the compiled loop instead of three.
            inv_bc1 = corrections.inverse("b1", b1, m_new.dtype)
            if nesterov:
                inv_bc1_next = corrections.inverse("b1", b1, m_new.dtype, offset=1)
                m_hat = (m_new * b1).mul_(inv_bc1_next).add_((g * (1 - b1)).mul_(inv_bc1))
            else:
                m_hat = m_new * inv_bc1
            denom = v_new * corrections.inverse("b2", b2, v_new.dtype)
            if add_eps_root:
                denom.add_(eps_root)
            u = m_hat.div_(denom.sqrt_().add_(eps))
            return u.to(g.dtype), m_new.to(m.dtype), v_new.to(v.dtype)

        u, mu, nu = per_leaf(one, updates, state.mu, state.nu)
        return u, ScaleByAdamState(count=count, mu=mu, nu=nu)

    return GradientTransformation(init_fn, update_fn)


# ---------------------------------------------------------------------------------------------
# RMS and centred RMS (RMSprop).


class ScaleByRmsState(NamedTuple):
    """State of `scale_by_rms`: the running mean of squared updates ``nu``.

    Example:
        >>> import torch
        >>> from functrain import optim
        >>> optim.scale_by_rms(initial_scale=1.0).init({"w": torch.zeros(2)})
        ScaleByRmsState(nu={'w': tensor([1., 1.])})
    """

    nu: Updates


class ScaleByRmsWithCountState(NamedTuple):
    """State of `scale_by_rms` with ``bias_correction=True``: step ``count`` and ``nu``.

    Example:
        >>> import torch
        >>> from functrain import optim
        >>> optim.scale_by_rms(bias_correction=True).init({"w": torch.zeros(1)})
        ScaleByRmsWithCountState(count=tensor(0), nu={'w': tensor([0.])})
    """

    count: torch.Tensor
    nu: Updates


def scale_by_rms(decay: float = 0.9, eps: float = 1e-8, initial_scale: float = 0.0,
                 eps_in_sqrt: bool = True, bias_correction: bool = False
                 ) -> GradientTransformation:
    """Divide updates by the root of a running mean of their squares (Tieleman & Hinton).

    ``update = g / sqrt(nu + eps)`` if ``eps_in_sqrt`` (optax's default), else
    ``g / (sqrt(nu) + eps)`` (``torch.optim.RMSprop``'s form). With ``bias_correction``,
    ``nu`` is divided by ``1 - decay**t`` first (as Adam does; schedule-free AdamW uses it).

    Args:
        decay: decay rate of the running mean, in [0, 1).
        eps: small constant, >= 0.
        initial_scale: initial value of ``nu``.
        eps_in_sqrt: put ``eps`` inside the square root.
        bias_correction: correct ``nu``'s bias towards ``initial_scale``; the state then
            carries a step count (`ScaleByRmsWithCountState`).

    Returns:
        A `GradientTransformation` with `ScaleByRmsState` (or `ScaleByRmsWithCountState`).

    Example:
        >>> import torch
        >>> from functrain import optim
        >>> opt = optim.scale_by_rms(decay=0.75, eps=0.0)
        >>> updates, _ = opt.update({"w": torch.tensor([2.0])}, opt.init({"w": torch.zeros(1)}))
        >>> updates["w"]  # 2 / sqrt(0.25 * 4)
        tensor([2.])
    """
    _checks.beta("decay", decay)
    _checks.non_negative("eps", eps)
    _checks.non_negative("initial_scale", initial_scale)

    def init_fn(params: Params) -> ScaleByRmsState | ScaleByRmsWithCountState:
        _checks.float_leaves(params, "params")
        nu = zeros(params, fill=initial_scale)
        if bias_correction:
            return ScaleByRmsWithCountState(count=zero_count(params), nu=nu)
        return ScaleByRmsState(nu=nu)

    def update_fn(updates: Updates, state: ScaleByRmsState | ScaleByRmsWithCountState,
                  params: Params | None = None):
        _checks.update_inputs(updates, params)
        _checks.updates(updates, state.nu, dtype=False, ref_name="state.nu")
        if bias_correction:
            count = state.count + 1
            corrections = BiasCorrections(count)

        def one(g, v):
            v_new = moment_sq(g, v, decay)
            v_hat = v_new * corrections.inverse("decay", decay, v_new.dtype) if (
                bias_correction) else v_new
            if eps_in_sqrt:
                u = g * (v_hat + eps).rsqrt_()
            else:
                u = g / v_hat.sqrt().add_(eps)
            return u.to(g.dtype), v_new.to(v.dtype)

        u, nu = per_leaf(one, updates, state.nu)
        if bias_correction:
            return u, ScaleByRmsWithCountState(count=count, nu=nu)
        return u, ScaleByRmsState(nu=nu)

    return GradientTransformation(init_fn, update_fn)


class ScaleByRStdDevState(NamedTuple):
    """State of `scale_by_stddev`: running means of the updates ``mu`` and their squares ``nu``.

    Example:
        >>> import torch
        >>> from functrain import optim
        >>> optim.scale_by_stddev().init({"w": torch.zeros(1)})
        ScaleByRStdDevState(mu={'w': tensor([0.])}, nu={'w': tensor([0.])})
    """

    mu: Updates
    nu: Updates


def scale_by_stddev(decay: float = 0.9, eps: float = 1e-8, initial_scale: float = 0.0,
                    eps_in_sqrt: bool = True) -> GradientTransformation:
    """Divide updates by a running estimate of their standard deviation (centred RMSprop).

    ``update = g / sqrt(nu - mu**2 + eps)`` if ``eps_in_sqrt``, else
    ``g / (sqrt(nu - mu**2) + eps)`` (``torch.optim.RMSprop(centered=True)``'s form).

    Args:
        decay: decay rate of the running means, in [0, 1).
        eps: small constant, >= 0.
        initial_scale: initial value of ``nu``.
        eps_in_sqrt: put ``eps`` inside the square root.

    Returns:
        A `GradientTransformation` with `ScaleByRStdDevState`.

    Example:
        >>> import torch
        >>> from functrain import optim
        >>> opt = optim.scale_by_stddev(decay=0.5, eps=0.0)
        >>> updates, _ = opt.update({"w": torch.tensor([2.0])}, opt.init({"w": torch.zeros(1)}))
        >>> updates["w"]  # 2 / sqrt(0.5 * 4 - 1 ** 2)
        tensor([2.])
    """
    _checks.beta("decay", decay)
    _checks.non_negative("eps", eps)
    _checks.non_negative("initial_scale", initial_scale)

    def init_fn(params: Params) -> ScaleByRStdDevState:
        _checks.float_leaves(params, "params")
        return ScaleByRStdDevState(mu=zeros(params), nu=zeros(params, fill=initial_scale))

    def update_fn(updates: Updates, state: ScaleByRStdDevState, params: Params | None = None):
        _checks.update_inputs(updates, params)
        _checks.updates(updates, state.nu, dtype=False, ref_name="state.nu")

        def one(g, m, v):
            m_new = moment(g, m, decay)
            v_new = moment_sq(g, v, decay)
            var = v_new - m_new * m_new
            if eps_in_sqrt:
                u = g * var.add_(eps).rsqrt_()
            else:
                u = g / var.sqrt_().add_(eps)
            return u.to(g.dtype), m_new.to(m.dtype), v_new.to(v.dtype)

        u, mu, nu = per_leaf(one, updates, state.mu, state.nu)
        return u, ScaleByRStdDevState(mu=mu, nu=nu)

    return GradientTransformation(init_fn, update_fn)


# ---------------------------------------------------------------------------------------------
# Adagrad (rss) and Lion.


class ScaleByRssState(NamedTuple):
    """State of `scale_by_rss`: the running ``sum_of_squares`` of the updates.

    Example:
        >>> import torch
        >>> from functrain import optim
        >>> optim.scale_by_rss().init({"w": torch.zeros(2)})
        ScaleByRssState(sum_of_squares={'w': tensor([0.1000, 0.1000])})
    """

    sum_of_squares: Updates


def scale_by_rss(initial_accumulator_value: float = 0.1,
                 eps: float = 1e-7) -> GradientTransformation:
    """Divide updates by the root of the sum of all past squared updates (Adagrad).

    ``update = g / sqrt(sum_of_squares + eps)`` (0 where the sum is 0). optax's form: eps sits
    inside the root, where ``torch.optim.Adagrad`` adds it outside (``g / (sqrt(s) + eps)``),
    and the defaults differ (torch: ``initial_accumulator_value=0``, ``eps=1e-10``); with
    ``eps=0`` the two agree.

    Args:
        initial_accumulator_value: starting value of the sum, >= 0.
        eps: small constant, >= 0.

    Returns:
        A `GradientTransformation` with `ScaleByRssState`.

    Example:
        >>> import torch
        >>> from functrain import optim
        >>> opt = optim.scale_by_rss(initial_accumulator_value=0.0, eps=0.0)
        >>> updates, _ = opt.update({"w": torch.tensor([-3.0])}, opt.init({"w": torch.zeros(1)}))
        >>> updates["w"]
        tensor([-1.])
    """
    _checks.non_negative("initial_accumulator_value", initial_accumulator_value)
    _checks.non_negative("eps", eps)

    def init_fn(params: Params) -> ScaleByRssState:
        _checks.float_leaves(params, "params")
        return ScaleByRssState(sum_of_squares=zeros(params, fill=initial_accumulator_value))

    def update_fn(updates: Updates, state: ScaleByRssState, params: Params | None = None):
        _checks.update_inputs(updates, params)
        _checks.updates(updates, state.sum_of_squares, dtype=False,
                        ref_name="state.sum_of_squares")

        def one(g, s):
            s_new = (g * g).add_(s)
            u = torch.where(s_new > 0, g / (s_new + eps).sqrt_(), 0.0)
            return u.to(g.dtype), s_new.to(s.dtype)

        u, s = per_leaf(one, updates, state.sum_of_squares)
        return u, ScaleByRssState(sum_of_squares=s)

    return GradientTransformation(init_fn, update_fn)


class ScaleByLionState(NamedTuple):
    """State of `scale_by_lion`: step ``count`` (0-d int64) and the momentum ``mu``.

    Example:
        >>> import torch
        >>> from functrain import optim
        >>> optim.scale_by_lion().init({"w": torch.zeros(2)})
        ScaleByLionState(count=tensor(0), mu={'w': tensor([0., 0.])})
    """

    count: torch.Tensor
    mu: Updates


def scale_by_lion(b1: float = 0.9, b2: float = 0.99,
                  mu_dtype: torch.dtype | None = None) -> GradientTransformation:
    """Lion's update direction (Chen et al., 2023): ``sign(b1 * mu + (1 - b1) * g)``.

    The momentum then moves as ``mu = b2 * mu + (1 - b2) * g``.

    Args:
        b1: interpolation rate for the update direction, in [0, 1).
        b2: decay rate of the momentum, in [0, 1).
        mu_dtype: dtype of the momentum (``None``: the params' dtype).

    Returns:
        A `GradientTransformation` with `ScaleByLionState`.

    Example:
        >>> import torch
        >>> from functrain import optim
        >>> opt = optim.scale_by_lion()
        >>> updates, _ = opt.update({"w": torch.tensor([0.3, -2.0, 0.0])},
        ...                         opt.init({"w": torch.zeros(3)}))
        >>> updates["w"]
        tensor([ 1., -1.,  0.])
    """
    _checks.beta("b1", b1)
    _checks.beta("b2", b2)
    _checks.dtype_or_none("mu_dtype", mu_dtype)

    def init_fn(params: Params) -> ScaleByLionState:
        _checks.float_leaves(params, "params")
        return ScaleByLionState(count=zero_count(params), mu=zeros(params, mu_dtype))

    def update_fn(updates: Updates, state: ScaleByLionState, params: Params | None = None):
        _checks.update_inputs(updates, params)
        _checks.updates(updates, state.mu, dtype=False, ref_name="state.mu")

        def one(g, m):
            u = torch.sign((g * (1 - b1)).add_(m * b1))
            return u.to(g.dtype), moment(g, m, b2).to(m.dtype)

        u, mu = per_leaf(one, updates, state.mu)
        return u, ScaleByLionState(count=state.count + 1, mu=mu)

    return GradientTransformation(init_fn, update_fn)
