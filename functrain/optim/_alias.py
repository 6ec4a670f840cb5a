"""Ready-made optimizers: chains of the transformations, as optax defines them.

Each alias takes optax's arguments and defaults. Where ``torch.optim`` differs, the docstring says
how to get the same math.
"""

from __future__ import annotations

import torch

from ._adaptive import scale_by_adam, scale_by_lion, scale_by_rms, scale_by_rss, scale_by_stddev
from ._base import GradientTransformation, MaskOrFn, ScalarOrSchedule, chain, identity
from ._transforms import add_decayed_weights, scale_by_learning_rate, trace


def sgd(learning_rate: ScalarOrSchedule, momentum: float | None = None, nesterov: bool = False,
        accumulator_dtype: torch.dtype | None = None) -> GradientTransformation:
    """Stochastic gradient descent, with optional (Nesterov) momentum.

    ``torch.optim.SGD(lr, momentum, nesterov=...)`` (``dampening=0``) computes the same. For
    its ``weight_decay`` (L2 added to the gradient), use
    ``chain(add_decayed_weights(weight_decay), sgd(...))``.

    Args:
        learning_rate: a non-negative number or a schedule.
        momentum: the momentum coefficient in [0, 1), or ``None`` for none (no state).
        nesterov: use Nesterov momentum.
        accumulator_dtype: dtype of the momentum buffer (``None``: the params' dtype).

    Returns:
        A `GradientTransformation`.

    Example:
        >>> import torch
        >>> from functrain import optim
        >>> opt = optim.sgd(learning_rate=0.1, momentum=0.9)
        >>> params = {"w": torch.tensor([1.0])}
        >>> state = opt.init(params)
        >>> for _ in range(2):
        ...     updates, state = opt.update({"w": torch.tensor([1.0])}, state, params)
        ...     params = optim.apply_updates(params, updates)
        >>> params["w"]  # 1 - 0.1 - 0.1 * 1.9
        tensor([0.7100])
    """
    return chain(
        trace(momentum, nesterov, accumulator_dtype) if momentum is not None else identity(),
        scale_by_learning_rate(learning_rate))


def adam(learning_rate: ScalarOrSchedule, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8,
         eps_root: float = 0.0, mu_dtype: torch.dtype | None = None, *,
         nesterov: bool = False) -> GradientTransformation:
    """Adam (Kingma & Ba, 2014): `scale_by_adam` then `scale_by_learning_rate`.

    Same math as ``torch.optim.Adam`` (``amsgrad=False``) with the same arguments.
    ``nesterov=True`` is optax's NAdam, not ``torch.optim.NAdam``; there is no AMSGrad option.
    For ``torch.optim.Adam``'s ``weight_decay`` (L2 added to the gradient), chain
    `add_decayed_weights` before it; for decoupled decay use `adamw`.

    Args:
        learning_rate: a non-negative number or a schedule.
        b1: decay rate of the first moment, in [0, 1).
        b2: decay rate of the second moment, in [0, 1).
        eps: added to the denominator outside the square root.
        eps_root: added inside the square root.
        mu_dtype: dtype of the first moment (``None``: the params' dtype).
        nesterov: use Nesterov momentum (NAdam).

    Returns:
        A `GradientTransformation` (a `chain`).

    Example:
        >>> import torch
        >>> from functrain import optim
        >>> opt = optim.adam(learning_rate=0.1)
        >>> params = {"w": torch.tensor([1.0, -1.0])}
        >>> updates, state = opt.update({"w": torch.tensor([5.0, -0.1])}, opt.init(params), params)
        >>> optim.apply_updates(params, updates)["w"]
        tensor([ 0.9000, -0.9000])
    """
    return chain(scale_by_adam(b1, b2, eps, eps_root, mu_dtype, nesterov=nesterov),
                 scale_by_learning_rate(learning_rate))


def adamw(learning_rate: ScalarOrSchedule, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8,
          eps_root: float = 0.0, mu_dtype: torch.dtype | None = None,
          weight_decay: float = 1e-4, mask: MaskOrFn = None, *,
          nesterov: bool = False) -> GradientTransformation:
    """AdamW (Loshchilov & Hutter, 2019): Adam with decoupled weight decay.

    The update is ``-learning_rate * (adam_direction + weight_decay * params)``: the decay is
    multiplied by the learning rate, as in ``torch.optim.AdamW``, so the same
    ``weight_decay`` value gives the same math. The default differs by design: optax's
    ``1e-4``, where torch uses ``1e-2``.

    Args:
        learning_rate: a non-negative number or a schedule.
        b1: decay rate of the first moment, in [0, 1).
        b2: decay rate of the second moment, in [0, 1).
        eps: added to the denominator outside the square root.
        eps_root: added inside the square root.
        mu_dtype: dtype of the first moment (``None``: the params' dtype).
        weight_decay: the decoupled weight decay rate, >= 0.
        mask: where to apply weight decay: a pytree of bools like the params, or a function of
            the params returning one (e.g. to skip biases and norms, like a torch param group
            with ``weight_decay=0``).
        nesterov: use Nesterov momentum.

    Returns:
        A `GradientTransformation` (a `chain`).

    Example:
        >>> import torch
        >>> from functrain import optim
        >>> no_bias = lambda params: {k: k.endswith("weight") for k in params}
        >>> opt = optim.adamw(1e-3, weight_decay=0.01, mask=no_bias)
        >>> params = {"fc.weight": torch.ones(2, 2), "fc.bias": torch.zeros(2)}
        >>> state = opt.init(params)
        >>> updates, state = opt.update({k: torch.ones_like(v) for k, v in params.items()},
        ...                             state, params)
        >>> round(updates["fc.weight"][0, 0].item(), 7), round(updates["fc.bias"][0].item(), 7)
        (-0.00101, -0.001)
    """
    return chain(scale_by_adam(b1, b2, eps, eps_root, mu_dtype, nesterov=nesterov),
                 add_decayed_weights(weight_decay, mask),
                 scale_by_learning_rate(learning_rate))


def rmsprop(learning_rate: ScalarOrSchedule, decay: float = 0.9, eps: float = 1e-8,
            initial_scale: float = 0.0, eps_in_sqrt: bool = True, centered: bool = False,
            momentum: float | None = None, nesterov: bool = False) -> GradientTransformation:
    """RMSprop (Tieleman & Hinton, 2012), optionally centred and with momentum.

    optax's defaults differ from ``torch.optim.RMSprop``'s: ``decay=0.9`` (torch
    ``alpha=0.99``) and ``eps`` inside the square root. ``rmsprop(lr, decay=alpha,
    eps=eps, eps_in_sqrt=False, centered=..., momentum=...)`` is torch's math (momentum
    ``None`` for torch's ``momentum=0``). The learning rate is applied before the momentum
    buffer, as in optax (and torch): with a schedule, the buffer holds scaled steps.

    Args:
        learning_rate: a non-negative number or a schedule.
        decay: decay rate of the squared-gradient average, in [0, 1).
        eps: small constant, >= 0.
        initial_scale: initial value of the squared-gradient average.
        eps_in_sqrt: put ``eps`` inside the square root.
        centered: divide by the standard deviation estimate (`scale_by_stddev`).
        momentum: momentum coefficient in [0, 1), or ``None`` for none.
        nesterov: use Nesterov momentum.

    Returns:
        A `GradientTransformation` (a `chain`).

    Example:
        >>> import torch
        >>> from functrain import optim
        >>> opt = optim.rmsprop(0.1, decay=0.75, eps=0.0, eps_in_sqrt=False)
        >>> params = {"w": torch.tensor([1.0])}
        >>> updates, _ = opt.update({"w": torch.tensor([2.0])}, opt.init(params), params)
        >>> updates["w"]  # -0.1 * 2 / sqrt(0.25 * 4)
        tensor([-0.2000])
    """
    scaler = scale_by_stddev if centered else scale_by_rms
    return chain(
        scaler(decay=decay, eps=eps, initial_scale=initial_scale, eps_in_sqrt=eps_in_sqrt),
        scale_by_learning_rate(learning_rate),
        trace(momentum, nesterov) if momentum is not None else identity())


def adagrad(learning_rate: ScalarOrSchedule, initial_accumulator_value: float = 0.1,
            eps: float = 1e-7) -> GradientTransformation:
    """Adagrad (Duchi et al., 2011): steps divided by the root of all past squared gradients.

    optax's form and defaults: ``g / sqrt(sum + eps)`` with ``initial_accumulator_value=0.1``,
    ``eps=1e-7``. ``torch.optim.Adagrad`` uses ``g / (sqrt(sum) + eps)`` with
    ``initial_accumulator_value=0``, ``eps=1e-10``; with ``eps=0`` on both sides (and
    ``lr_decay=0``) the math is the same.

    Args:
        learning_rate: a non-negative number or a schedule.
        initial_accumulator_value: starting value of the sum of squares, >= 0.
        eps: small constant, >= 0.

    Returns:
        A `GradientTransformation` (a `chain`).

    Example:
        >>> import torch
        >>> from functrain import optim
        >>> opt = optim.adagrad(0.5, initial_accumulator_value=0.0, eps=0.0)
        >>> params = {"w": torch.tensor([1.0])}
        >>> updates, _ = opt.update({"w": torch.tensor([-4.0])}, opt.init(params), params)
        >>> updates["w"]
        tensor([0.5000])
    """
    return chain(scale_by_rss(initial_accumulator_value, eps),
                 scale_by_learning_rate(learning_rate))


def lion(learning_rate: ScalarOrSchedule, b1: float = 0.9, b2: float = 0.99,
         mu_dtype: torch.dtype | None = None, weight_decay: float = 1e-3,
         mask: MaskOrFn = None) -> GradientTransformation:
    """Lion (Chen et al., 2023): the sign of an interpolated momentum, plus decoupled decay.

    ``-learning_rate * (sign(b1 * mu + (1 - b1) * g) + weight_decay * params)``. Every element
    moves by exactly the learning rate, so Lion wants a 3-10x smaller learning rate and a
    larger weight decay than AdamW.

    Args:
        learning_rate: a non-negative number or a schedule.
        b1: interpolation rate for the update direction, in [0, 1).
        b2: decay rate of the momentum, in [0, 1).
        mu_dtype: dtype of the momentum (``None``: the params' dtype).
        weight_decay: the decoupled weight decay rate, >= 0.
        mask: where to apply weight decay (see `adamw`).

    Returns:
        A `GradientTransformation` (a `chain`).

    Example:
        >>> import torch
        >>> from functrain import optim
        >>> opt = optim.lion(0.1, weight_decay=0.0)
        >>> params = {"w": torch.tensor([1.0, 1.0])}
        >>> updates, _ = opt.update({"w": torch.tensor([0.01, -5.0])}, opt.init(params), params)
        >>> updates["w"]
        tensor([-0.1000,  0.1000])
    """
    return chain(scale_by_lion(b1, b2, mu_dtype),
                 add_decayed_weights(weight_decay, mask),
                 scale_by_learning_rate(learning_rate))
