"""Weight averaging carried in the optimizer state: an exponential moving average of the
params (`ema_params`) or their plain average (`swa_params`, stochastic weight averaging), and
`averaged_params` to read them back for evaluation and export.

They follow ``torch.optim.swa_utils.AveragedModel``: the first averaged step copies the params,
later ones blend them in (``get_ema_multi_avg_fn(decay)`` / the default SWA mean).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch

from functrain import _errors
from functrain import tree as _tree

from . import _checks
from ._base import GradientTransformation, OptState, Params, Updates, zero_count
from ._classic import ScaleByAsgdState
from ._transforms import _NO_PARAMS


class AveragedParamsState(NamedTuple):
    """State of `ema_params` and `swa_params`: the step ``count``, how many steps were
    averaged (``n_averaged``, 0-d int64) and the ``averaged`` params.

    Example:
        >>> import torch
        >>> from functrain import optim
        >>> optim.ema_params(0.99).init({"w": torch.ones(1)}).n_averaged
        tensor(0)
    """

    count: torch.Tensor
    n_averaged: torch.Tensor
    averaged: Params


def _averaging(kind: str, decay: float, start: int, every: int,
               accumulator_dtype: torch.dtype | None) -> GradientTransformation:
    def init_fn(params: Params) -> AveragedParamsState:
        _checks.float_leaves(params, "params")
        return AveragedParamsState(
            count=zero_count(params), n_averaged=zero_count(params),
            averaged=_tree.map(lambda p: p.to(accumulator_dtype or p.dtype, copy=True), params))

    def update_fn(updates: Updates, state: AveragedParamsState, params: Params | None = None):
        if params is None:
            raise ValueError(_NO_PARAMS.format(name=f"{kind}_params"))
        _checks.update_inputs(updates, params)
        include = (state.count >= start) & ((state.count - start) % every == 0)
        n = state.n_averaged

        def one(p, u, avg):
            new = (p + u).to(p.dtype).to(avg.dtype)  # the params after this step
            if kind == "ema":
                blended = torch.lerp(avg, new, 1 - decay)
            else:
                blended = torch.lerp(avg, new, 1 / (n + 1).to(avg.dtype))
            return torch.where(include, torch.where(n == 0, new, blended), avg)

        averaged = _tree.map(one, params, updates, state.averaged)
        return updates, AveragedParamsState(count=state.count + 1,
                                            n_averaged=torch.where(include, n + 1, n),
                                            averaged=averaged)

    return GradientTransformation(init_fn, update_fn)


def ema_params(decay: float = 0.999, start: int = 0, every: int = 1,
               accumulator_dtype: torch.dtype | None = None) -> GradientTransformation:
    """Keep an exponential moving average of the params in the state; updates pass unchanged.

    Put it last in a chain (it averages ``params + updates``, the params after the step):
    ``chain(adamw(1e-3), ema_params(0.999))``. Equals ``AveragedModel(model,
    multi_avg_fn=get_ema_multi_avg_fn(decay))`` updated after every optimizer step: the first
    averaged step copies the params, later ones do ``avg = decay * avg + (1 - decay) * p``.
    Read it with `averaged_params`.

    Args:
        decay: the EMA decay, in [0, 1).
        start: the first step (0-based) to average.
        every: average every ``every``-th step from ``start``, >= 1.
        accumulator_dtype: dtype of the average (``None``: the params'; float32 keeps a
            bfloat16 model's average precise).

    Returns:
        A `GradientTransformation` with `AveragedParamsState`; it needs ``params`` at update.

    Example:
        >>> import torch
        >>> from functrain import optim
        >>> opt = optim.chain(optim.sgd(1.0), optim.ema_params(decay=0.5))
        >>> params = {"w": torch.tensor([0.0])}
        >>> state = opt.init(params)
        >>> for _ in range(3):
        ...     updates, state = opt.update({"w": torch.tensor([-1.0])}, state, params)
        ...     params = optim.apply_updates(params, updates)
        >>> params["w"], optim.averaged_params(state)["w"]  # 1, then (1 + 2) / 2, (1.5 + 3) / 2
        (tensor([3.]), tensor([2.2500]))
    """
    _checks.beta("decay", decay)
    _errors.check_int("start", start, minimum=0)
    _errors.check_int("every", every, minimum=1)
    _checks.dtype_or_none("accumulator_dtype", accumulator_dtype)
    return _averaging("ema", decay, start, every, accumulator_dtype)


def swa_params(start: int = 0, every: int = 1,
               accumulator_dtype: torch.dtype | None = None) -> GradientTransformation:
    """Keep the plain average of the params (stochastic weight averaging, Izmailov et al., 2018)
    from step ``start`` on, every ``every`` steps; updates pass unchanged.

    Put it last in a chain. Equals ``torch.optim.swa_utils.AveragedModel(model)`` (its default
    averaging) with ``update_parameters`` called after the same optimizer steps. Read it with
    `averaged_params`; like torch, recompute batch-norm statistics for the averaged params
    before evaluating a model that has them.

    Args:
        start: the first step (0-based) to average.
        every: average every ``every``-th step from ``start``, >= 1.
        accumulator_dtype: dtype of the average (``None``: the params').

    Returns:
        A `GradientTransformation` with `AveragedParamsState`; it needs ``params`` at update.

    Example:
        >>> import torch
        >>> from functrain import optim
        >>> opt = optim.chain(optim.sgd(1.0), optim.swa_params(start=1))
        >>> params = {"w": torch.tensor([0.0])}
        >>> state = opt.init(params)
        >>> for _ in range(3):
        ...     updates, state = opt.update({"w": torch.tensor([-1.0])}, state, params)
        ...     params = optim.apply_updates(params, updates)
        >>> optim.averaged_params(state)["w"]  # mean of 2 and 3
        tensor([2.5000])
    """
    _errors.check_int("start", start, minimum=0)
    _errors.check_int("every", every, minimum=1)
    _checks.dtype_or_none("accumulator_dtype", accumulator_dtype)
    return _averaging("swa", 0.0, start, every, accumulator_dtype)


def _find(state: Any) -> list[Any]:
    if isinstance(state, AveragedParamsState):
        return [state.averaged]
    if isinstance(state, ScaleByAsgdState):
        return [state.ax]
    found: list[Any] = []
    if isinstance(state, (tuple, list)):
        for s in state:
            found += _find(s)
    elif isinstance(state, dict):
        for s in state.values():
            found += _find(s)
    return found


def averaged_params(state: OptState) -> Params:
    """The averaged params held by an optimizer state: those of `ema_params`, `swa_params` or
    `asgd` (its ``ax``), found anywhere in ``state`` (a `chain`, `inject_hyperparams`,
    `MultiSteps`...). Use them for evaluation and export; pure.

    Args:
        state: an optimizer state holding exactly one average.

    Returns:
        The averaged params.

    Raises:
        ValueError: if ``state`` holds no average, or more than one.

    Example:
        >>> import torch
        >>> from functrain import optim
        >>> state = optim.chain(optim.adam(0.1), optim.ema_params()).init({"w": torch.ones(1)})
        >>> optim.averaged_params(state)
        {'w': tensor([1.])}
    """
    found = _find(state)
    if len(found) != 1:
        raise ValueError(
            f"averaged_params: state: expected exactly one averaged-params state, found "
            f"{len(found)}. HINT: chain ema_params(...) or swa_params(...) last in the "
            "optimizer (or use asgd).")
    return found[0]
