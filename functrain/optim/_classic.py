"""Rescalings outside Adam's family: Adadelta, Rprop, ASGD, SM3, NovoGrad, sign, optimistic
gradients, Polyak's step size, and a plain exponential moving average (`ema`).

Each follows optax's math and defaults (torch's for `scale_by_asgd`, which optax lacks). The
learning rate is applied separately unless the docstring says otherwise.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch

from functrain import _errors
from functrain import tree as _tree

from . import _checks
from ._adam_family import scalar_dtype
from ._base import EmptyState, GradientTransformation, Params, Updates, device_of, zero_count
from ._transforms import _NO_PARAMS, BiasCorrections, moment_sq, per_leaf, zeros


def _empty(params: Params) -> EmptyState:
    del params
    return EmptyState()


# ---------------------------------------------------------------------------------------------
# EMA and sign.


class EmaState(NamedTuple):
    """State of `ema`: step ``count`` and the running average ``ema``.

    Example:
        >>> import torch
        >>> from functrain import optim
        >>> optim.ema(0.9).init({"w": torch.zeros(1)})
        EmaState(count=tensor(0), ema={'w': tensor([0.])})
    """

    count: torch.Tensor
    ema: Updates


def ema(decay: float, debias: bool = True,
        accumulator_dtype: torch.dtype | None = None) -> GradientTransformation:
    """An exponential moving average of the updates: ``ema = decay * ema + (1 - decay) * g``.

    Args:
        decay: the decay rate, in [0, 1).
        debias: divide by ``1 - decay**t`` (so the first update is ``g`` itself).
        accumulator_dtype: dtype of the average (``None``: the params' dtype).

    Returns:
        A `GradientTransformation` with `EmaState`.

    Example:
        >>> import torch
        >>> from functrain import optim
        >>> opt = optim.ema(0.5, debias=False)
        >>> updates, _ = opt.update({"w": torch.tensor([2.0])}, opt.init({"w": torch.zeros(1)}))
        >>> updates["w"]
        tensor([1.])
    """
    _checks.beta("decay", decay)
    _checks.dtype_or_none("accumulator_dtype", accumulator_dtype)

    def init_fn(params: Params) -> EmaState:
        _checks.float_leaves(params, "params")
        return EmaState(count=zero_count(params), ema=zeros(params, accumulator_dtype))

    def update_fn(updates: Updates, state: EmaState, params: Params | None = None):
        _checks.update_inputs(updates, params)
        _checks.updates(updates, state.ema, dtype=False, ref_name="state.ema")
        count = state.count + 1
        bc = BiasCorrections(count)

        def one(g, e):
            e_new = (g * (1 - decay)) + e * decay
            u = e_new * bc.inverse("decay", decay, e_new.dtype) if debias else e_new
            return u.to(g.dtype), e_new.to(e.dtype)

        u, e = per_leaf(one, updates, state.ema)
        return u, EmaState(count=count, ema=e)

    return GradientTransformation(init_fn, update_fn)


def scale_by_sign() -> GradientTransformation:
    """Replace every update by its sign (signSGD, Bernstein et al., 2018).

    Returns:
        A stateless `GradientTransformation`.

    Example:
        >>> import torch
        >>> from functrain import optim
        >>> optim.scale_by_sign().update({"w": torch.tensor([-0.3, 0.0, 2.0])},
        ...                              optim.EmptyState())[0]
        {'w': tensor([-1.,  0.,  1.])}
    """

    def update_fn(updates: Updates, state: EmptyState, params: Params | None = None):
        _checks.update_inputs(updates, params)
        return _tree.map(torch.sign, updates), state

    return GradientTransformation(_empty, update_fn)


# ---------------------------------------------------------------------------------------------
# Adadelta and Rprop.


class ScaleByAdaDeltaState(NamedTuple):
    """State of `scale_by_adadelta`: running means of squared gradients ``e_g`` and of squared
    updates ``e_x``.

    Example:
        >>> import torch
        >>> from functrain import optim
        >>> optim.scale_by_adadelta().init({"w": torch.zeros(1)})
        ScaleByAdaDeltaState(e_g={'w': tensor([0.])}, e_x={'w': tensor([0.])})
    """

    e_g: Updates
    e_x: Updates


def scale_by_adadelta(rho: float = 0.9, eps: float = 1e-6) -> GradientTransformation:
    """Adadelta (Zeiler, 2012): ``g * sqrt(e_x + eps) / sqrt(e_g + eps)``.

    The same math as ``torch.optim.Adadelta`` (its ``lr`` is `adadelta`'s learning rate).

    Args:
        rho: decay rate of both running means, in [0, 1).
        eps: added inside both square roots, >= 0.

    Returns:
        A `GradientTransformation` with `ScaleByAdaDeltaState`.

    Example:
        >>> import torch
        >>> from functrain import optim
        >>> opt = optim.scale_by_adadelta(rho=0.0, eps=1.0)
        >>> updates, _ = opt.update({"w": torch.tensor([0.0])}, opt.init({"w": torch.zeros(1)}))
        >>> updates["w"]
        tensor([0.])
    """
    _checks.beta("rho", rho)
    _checks.non_negative("eps", eps)

    def init_fn(params: Params) -> ScaleByAdaDeltaState:
        _checks.float_leaves(params, "params")
        return ScaleByAdaDeltaState(e_g=zeros(params), e_x=zeros(params))

    def update_fn(updates: Updates, state: ScaleByAdaDeltaState, params: Params | None = None):
        _checks.update_inputs(updates, params)
        _checks.updates(updates, state.e_g, dtype=False, ref_name="state.e_g")

        def one(g, e_g, e_x):
            e_g_new = moment_sq(g, e_g, rho)
            u = (e_x + eps).sqrt() / (e_g_new + eps).sqrt() * g
            e_x_new = moment_sq(u, e_x, rho)
            return u.to(g.dtype), e_g_new.to(e_g.dtype), e_x_new.to(e_x.dtype)

        u, e_g, e_x = per_leaf(one, updates, state.e_g, state.e_x)
        return u, ScaleByAdaDeltaState(e_g=e_g, e_x=e_x)

    return GradientTransformation(init_fn, update_fn)


class ScaleByRpropState(NamedTuple):
    """State of `scale_by_rprop`: per-element ``step_sizes`` and the previous updates.

    Example:
        >>> import torch
        >>> from functrain import optim
        >>> optim.scale_by_rprop(0.1).init({"w": torch.zeros(1)}).step_sizes
        {'w': tensor([0.1000])}
    """

    step_sizes: Updates
    prev_updates: Updates


def scale_by_rprop(learning_rate: float, eta_minus: float = 0.5, eta_plus: float = 1.2,
                   min_step_size: float = 1e-6, max_step_size: float = 50.0
                   ) -> GradientTransformation:
    """Rprop (Riedmiller & Braun, 1993): per-element step sizes grown by ``eta_plus`` while the
    gradient keeps its sign and shrunk by ``eta_minus`` when it flips (that step is skipped).

    The update is ``+step_size * sign(g)`` (`rprop` flips the sign); the same math as
    ``torch.optim.Rprop(lr, etas=(eta_minus, eta_plus), step_sizes=(min, max))``. optax
    0.2.8's ``scale_by_rprop`` differs: it returns the previous step's update (its first
    update is zero, each later one lags a step behind); this follows torch and the paper.

    Args:
        learning_rate: the initial step size, > 0.
        eta_minus: shrink factor, in (0, 1].
        eta_plus: growth factor, >= 1.
        min_step_size: smallest step size, >= 0.
        max_step_size: largest step size, >= ``min_step_size``.

    Returns:
        A `GradientTransformation` with `ScaleByRpropState`.

    Example:
        >>> import torch
        >>> from functrain import optim
        >>> opt = optim.scale_by_rprop(0.1)
        >>> state = opt.init({"w": torch.zeros(2)})
        >>> for g in ([1.0, 1.0], [2.0, -1.0]):
        ...     updates, state = opt.update({"w": torch.tensor(g)}, state)
        >>> updates["w"]  # grew on the kept sign; skipped on the flip
        tensor([0.1200, 0.0000])
    """
    _checks.positive("learning_rate", learning_rate)
    _checks.number("eta_minus", eta_minus, low=0.0, low_open=True, high=1.0, high_open=False)
    _checks.number("eta_plus", eta_plus, low=1.0)
    _checks.non_negative("min_step_size", min_step_size)
    _checks.number("max_step_size", max_step_size, low=min_step_size)

    def init_fn(params: Params) -> ScaleByRpropState:
        _checks.float_leaves(params, "params")
        return ScaleByRpropState(step_sizes=zeros(params, fill=learning_rate),
                                 prev_updates=zeros(params))

    def update_fn(updates: Updates, state: ScaleByRpropState, params: Params | None = None):
        _checks.update_inputs(updates, params)
        _checks.updates(updates, state.step_sizes, dtype=False, ref_name="state.step_sizes")

        def one(g, step, prev):
            s = g * prev
            grown = torch.clamp(step * torch.where(s > 0, eta_plus, eta_minus),
                                min=min_step_size, max=max_step_size)
            step_new = torch.where(s == 0, step, grown)
            u = torch.where(s < 0, 0.0, step_new * torch.sign(g))
            return u.to(g.dtype), step_new.to(step.dtype), u.to(prev.dtype)

        u, steps, prev = per_leaf(one, updates, state.step_sizes, state.prev_updates)
        return u, ScaleByRpropState(step_sizes=steps, prev_updates=prev)

    return GradientTransformation(init_fn, update_fn)


# ---------------------------------------------------------------------------------------------
# ASGD.


class ScaleByAsgdState(NamedTuple):
    """State of `scale_by_asgd`: ``count``, the current step size ``eta`` and averaging weight
    ``mu`` (0-d floats), and ``ax``, the averaged params (use them for evaluation, see
    `averaged_params`).

    Example:
        >>> import torch
        >>> from functrain import optim
        >>> state = optim.scale_by_asgd().init({"w": torch.ones(1)})
        >>> state.eta, state.mu, state.ax
        (tensor(0.0100), tensor(1.), {'w': tensor([1.])})
    """

    count: torch.Tensor
    eta: torch.Tensor
    mu: torch.Tensor
    ax: Params


def scale_by_asgd(learning_rate: float = 1e-2, lambd: float = 1e-4, alpha: float = 0.75,
                  t0: float = 1e6) -> GradientTransformation:
    """Averaged SGD as ``torch.optim.ASGD`` computes it (Polyak & Juditsky, 1992).

    The update is the whole descent step ``-eta * (g + lambd * params)`` (learning rate and
    sign included), with ``eta_t = lr / (1 + lambd * lr * t)**alpha``; the state keeps ``ax``,
    the average of the params after each step from step ``t0`` on (before it, ``ax`` follows
    the params). Put it last in a chain: ``ax`` averages ``params + update``. torch's
    ``weight_decay`` is `add_decayed_weights` chained before it (see `asgd`).

    Args:
        learning_rate: torch's ``lr``, >= 0.
        lambd: the decay term, >= 0.
        alpha: the power of the step-size decay, >= 0.
        t0: the step from which averaging starts, >= 0.

    Returns:
        A `GradientTransformation` with `ScaleByAsgdState`; it needs ``params`` at update.

    Example:
        >>> import torch
        >>> from functrain import optim
        >>> opt = optim.scale_by_asgd(learning_rate=0.1, lambd=0.0)
        >>> params = {"w": torch.ones(1)}
        >>> updates, state = opt.update({"w": torch.ones(1)}, opt.init(params), params)
        >>> updates["w"], state.ax["w"]
        (tensor([-0.1000]), tensor([0.9000]))
    """
    _checks.non_negative("learning_rate", learning_rate)
    _checks.non_negative("lambd", lambd)
    _checks.non_negative("alpha", alpha)
    _checks.non_negative("t0", t0)

    def init_fn(params: Params) -> ScaleByAsgdState:
        _checks.float_leaves(params, "params")
        dt, device = scalar_dtype(params), device_of(params)
        return ScaleByAsgdState(count=zero_count(params),
                                eta=torch.full((), learning_rate, dtype=dt, device=device),
                                mu=torch.ones((), dtype=dt, device=device),
                                ax=_tree.map(torch.clone, params))

    def update_fn(updates: Updates, state: ScaleByAsgdState, params: Params | None = None):
        if params is None:
            raise ValueError(_NO_PARAMS.format(name="scale_by_asgd"))
        _checks.update_inputs(updates, params)
        count = state.count + 1

        def one(g, p, ax):
            eta = state.eta.to(p.dtype)
            p_new = p * (1 - lambd * eta) - eta * g
            mu = state.mu.to(ax.dtype)
            ax_new = torch.where(mu == 1, p_new.to(ax.dtype), ax + (p_new - ax) * mu)
            return (p_new - p).to(g.dtype), None, ax_new

        u, _, ax = per_leaf(one, updates, params, state.ax)
        t = count.to(state.eta.dtype)
        eta = learning_rate / (1 + lambd * learning_rate * t) ** alpha
        mu = 1 / torch.clamp(t - t0, min=1)
        return u, ScaleByAsgdState(count=count, eta=eta, mu=mu, ax=ax)

    return GradientTransformation(init_fn, update_fn)


# ---------------------------------------------------------------------------------------------
# SM3 and NovoGrad.


class ScaleBySM3State(NamedTuple):
    """State of `scale_by_sm3`: per leaf, a list of one accumulator per dimension (``mu``),
    and the momentum ``nu``.

    Example:
        >>> import torch
        >>> from functrain import optim
        >>> state = optim.scale_by_sm3().init({"w": torch.zeros(2, 3)})
        >>> [a.shape for a in state.mu["w"]]
        [torch.Size([2]), torch.Size([3])]
    """

    mu: Any
    nu: Updates


def scale_by_sm3(b1: float = 0.9, b2: float = 1.0, eps: float = 1e-8) -> GradientTransformation:
    """SM3 (Anil et al., 2019): Adagrad with memory linear in the sum of a tensor's dimensions.

    Each dimension keeps the maximum of the accumulated squares over the others; an element's
    accumulator is the minimum over its dimensions. Momentum ``b1`` is applied after.

    Args:
        b1: momentum decay rate, in [0, 1).
        b2: decay of the accumulators, in [0, 1] (1: a plain sum, as in Adagrad).
        eps: added inside the root, >= 0.

    Returns:
        A `GradientTransformation` with `ScaleBySM3State`.

    Example:
        >>> import torch
        >>> from functrain import optim
        >>> opt = optim.scale_by_sm3(b1=0.0)
        >>> updates, _ = opt.update({"w": torch.tensor([2.0])}, opt.init({"w": torch.zeros(1)}))
        >>> updates["w"]
        tensor([1.])
    """
    _checks.beta("b1", b1)
    _checks.number("b2", b2, low=0.0, high=1.0, high_open=False)
    _checks.non_negative("eps", eps)
    c_new, c_old = (1.0 - b2 if b2 != 1.0 else 1.0), b2

    def init_fn(params: Params) -> ScaleBySM3State:
        _checks.float_leaves(params, "params")
        mu = _tree.map(lambda p: [p.new_zeros(p.shape[i]) for i in range(p.ndim)], params)
        return ScaleBySM3State(mu=mu, nu=zeros(params))

    def update_fn(updates: Updates, state: ScaleBySM3State, params: Params | None = None):
        _checks.update_inputs(updates, params)
        _checks.updates(updates, state.nu, dtype=False, ref_name="state.nu")

        def one(g, accs, nu):
            if g.ndim == 0:
                acc = c_new * g * g  # a scalar keeps no accumulator (optax: v[0] of [] fails)
                new_accs = []
            else:
                views = [a.reshape([1] * i + [g.shape[i]] + [1] * (g.ndim - i - 1))
                         for i, a in enumerate(accs)]
                prev = views[0]
                for v in views[1:]:
                    prev = torch.minimum(prev, v)
                acc = c_new * g * g + c_old * prev
                if g.ndim < 2:
                    new_accs = [acc]
                else:
                    new_accs = [torch.amax(acc, dim=[d for d in range(g.ndim) if d != i])
                                for i in range(g.ndim)]
            inv = torch.where(acc > 0, (acc + eps).rsqrt(), 0.0)
            nu_new = (g * inv) * (1 - b1) + nu * b1
            return nu_new.to(g.dtype), new_accs, nu_new.to(nu.dtype)

        outs = _tree.map(one, updates, state.mu, state.nu)
        pick = lambda i: _tree.map(lambda _, o: o[i], updates, outs)  # noqa: E731
        return pick(0), ScaleBySM3State(mu=pick(1), nu=pick(2))

    return GradientTransformation(init_fn, update_fn)


class ScaleByNovogradState(NamedTuple):
    """State of `scale_by_novograd`: ``count``, the momentum ``mu`` and, per leaf, a 0-d running
    mean ``nu`` of the squared gradient norm.

    Example:
        >>> import torch
        >>> from functrain import optim
        >>> optim.scale_by_novograd().init({"w": torch.zeros(3)}).nu
        {'w': tensor(0.)}
    """

    count: torch.Tensor
    mu: Updates
    nu: Updates


def scale_by_novograd(b1: float = 0.9, b2: float = 0.25, eps: float = 1e-8,
                      eps_root: float = 0.0, weight_decay: float = 0.0,
                      mu_dtype: torch.dtype | None = None) -> GradientTransformation:
    """NovoGrad (Ginsburg et al., 2019): layer-wise second moments (one number per leaf).

    ``nu = b2 * nu + (1 - b2) * |g|^2``; ``mu = b1 * mu + g / (sqrt(nu) + eps) + wd * p`` (on
    the first step ``nu = |g|^2`` and ``mu`` is the bracket alone).

    Args:
        b1: momentum decay, in [0, 1).
        b2: decay of the per-leaf second moment, in [0, 1).
        eps: added to the denominator outside the root, >= 0.
        eps_root: added inside the root, >= 0.
        weight_decay: weight decay inside the momentum, >= 0.
        mu_dtype: dtype of the momentum (``None``: the params' dtype).

    Returns:
        A `GradientTransformation` with `ScaleByNovogradState`; it needs ``params`` at update.

    Example:
        >>> import torch
        >>> from functrain import optim
        >>> opt = optim.scale_by_novograd(eps=0.0)
        >>> params = {"w": torch.zeros(2)}
        >>> updates, _ = opt.update({"w": torch.tensor([3.0, 4.0])}, opt.init(params), params)
        >>> updates["w"]
        tensor([0.6000, 0.8000])
    """
    _checks.beta("b1", b1)
    _checks.beta("b2", b2)
    _checks.non_negative("eps", eps)
    _checks.non_negative("eps_root", eps_root)
    _checks.non_negative("weight_decay", weight_decay)
    _checks.dtype_or_none("mu_dtype", mu_dtype)

    def init_fn(params: Params) -> ScaleByNovogradState:
        _checks.float_leaves(params, "params")
        return ScaleByNovogradState(count=zero_count(params), mu=zeros(params, mu_dtype),
                                    nu=_tree.map(lambda p: p.new_zeros(()), params))

    def update_fn(updates: Updates, state: ScaleByNovogradState, params: Params | None = None):
        if params is None:
            raise ValueError(_NO_PARAMS.format(name="scale_by_novograd"))
        _checks.update_inputs(updates, params)
        first = state.count == 0

        def one(g, p, m, n):
            sq = torch.linalg.vector_norm(g) ** 2
            n_new = torch.where(first, sq.to(n.dtype), (sq * (1 - b2) + n * b2).to(n.dtype))
            add = g / ((n_new + eps_root).sqrt() + eps) + weight_decay * p
            m_new = torch.where(first, add, m * b1 + add)
            return m_new.to(g.dtype), None, m_new.to(m.dtype), n_new

        u, _, mu, nu = per_leaf(one, updates, params, state.mu, state.nu)
        return u, ScaleByNovogradState(count=state.count + 1, mu=mu, nu=nu)

    return GradientTransformation(init_fn, update_fn)


# ---------------------------------------------------------------------------------------------
# Optimistic gradients and Polyak's step size.


class ScaleByOptimisticGradientState(NamedTuple):
    """State of `scale_by_optimistic_gradient`: whether no step was taken yet, and the previous
    gradient.

    Example:
        >>> import torch
        >>> from functrain import optim
        >>> optim.scale_by_optimistic_gradient().init({"w": torch.zeros(1)}).is_initial_step
        tensor(True)
    """

    is_initial_step: torch.Tensor
    previous_gradient: Updates


def scale_by_optimistic_gradient(alpha: float = 1.0, beta: float = 1.0
                                 ) -> GradientTransformation:
    """Optimistic gradients (Mokhtari et al., 2019): ``(alpha + beta) * g - beta * g_prev``.

    Args:
        alpha: weight of the current gradient.
        beta: weight of the gradient's change.

    Returns:
        A `GradientTransformation` with `ScaleByOptimisticGradientState`.

    Example:
        >>> import torch
        >>> from functrain import optim
        >>> opt = optim.scale_by_optimistic_gradient()
        >>> state = opt.init({"w": torch.zeros(1)})
        >>> for g in (1.0, 3.0):
        ...     updates, state = opt.update({"w": torch.tensor([g])}, state)
        >>> updates["w"]  # 2 * 3 - 1
        tensor([5.])
    """
    _checks.number("alpha", alpha)
    _checks.number("beta", beta)

    def init_fn(params: Params) -> ScaleByOptimisticGradientState:
        _checks.float_leaves(params, "params")
        return ScaleByOptimisticGradientState(
            is_initial_step=torch.ones((), dtype=torch.bool, device=device_of(params)),
            previous_gradient=zeros(params))

    def update_fn(updates: Updates, state: ScaleByOptimisticGradientState,
                  params: Params | None = None):
        _checks.update_inputs(updates, params)

        def one(g, prev):
            prev = torch.where(state.is_initial_step, g, prev.to(g.dtype))
            return (alpha + beta) * g - beta * prev

        u = _tree.map(one, updates, state.previous_gradient)
        prev = _tree.map(lambda p, g: g.to(p.dtype), state.previous_gradient, updates)
        return u, ScaleByOptimisticGradientState(
            is_initial_step=torch.zeros_like(state.is_initial_step), previous_gradient=prev)

    return GradientTransformation(init_fn, update_fn)


def scale_by_polyak(f_min: float = 0.0, max_learning_rate: float = 1.0, eps: float = 0.0,
                    variant: str = "sps") -> GradientTransformation:
    """Polyak's step size (Loizou et al., 2021): ``min((f - f_min) / |g|^2, max_lr) * g``.

    Needs the loss: call ``update(grads, state, params, value=loss)`` (through `chain` and the
    wrappers too). ``variant="sps+"`` clips a negative gap ``f - f_min`` to 0.

    Args:
        f_min: a lower bound of the loss.
        max_learning_rate: the largest step size, >= 0.
        eps: added to ``|g|^2``, >= 0.
        variant: ``"sps"`` or ``"sps+"``.

    Returns:
        A stateless `GradientTransformation` whose update takes ``value``.

    Raises:
        ValueError: on a bad ``variant``, or (at update) without ``value``.

    Example:
        >>> import torch
        >>> from functrain import optim
        >>> opt = optim.scale_by_polyak()
        >>> grads = {"w": torch.tensor([2.0])}
        >>> opt.update(grads, opt.init(grads), value=torch.tensor(2.0))[0]  # 2 / 4 * g
        {'w': tensor([1.])}
    """
    _checks.number("f_min", f_min)
    _checks.non_negative("max_learning_rate", max_learning_rate)
    _checks.non_negative("eps", eps)
    _errors.check_choice("variant", variant, ("sps", "sps+"))
    tiny = torch.finfo(torch.float64).eps

    def update_fn(updates: Updates, state: EmptyState, params: Params | None = None, *,
                  value: Any = None, **extra_args: Any):
        del extra_args
        if value is None:
            raise ValueError("scale_by_polyak: expected the loss as value=..., got None. HINT: "
                             "opt.update(grads, state, params, value=loss).")
        _checks.update_inputs(updates, params)
        sq = _tree.global_norm(updates) ** 2
        gap = torch.as_tensor(value, device=sq.device).to(sq.dtype) - f_min
        if variant == "sps+":
            gap = torch.relu(gap)
        step = torch.where(sq + eps <= tiny, 0.0, torch.minimum(gap / (sq + eps),
                                                                torch.as_tensor(
                                                                    max_learning_rate,
                                                                    dtype=sq.dtype,
                                                                    device=sq.device)))
        return _tree.map(lambda g: (g * step.to(g.dtype)), updates), state

    return GradientTransformation(_empty, update_fn)
