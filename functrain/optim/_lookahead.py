"""Lookahead (Zhang et al., 2019): a fast optimizer, and slow weights pulled towards the fast
ones every ``sync_period`` steps."""

from __future__ import annotations

from typing import Any, NamedTuple

import torch

from functrain import _errors
from functrain import tree as _tree

from . import _checks
from ._base import GradientTransformation, OptState, Params, Updates, zero_count
from ._wrappers import select


class LookaheadParams(NamedTuple):
    """The params `lookahead` works on: the ``fast`` and the ``slow`` copy.

    Evaluate with ``slow`` (the weights Lookahead returns); train the fast ones.

    Example:
        >>> import torch
        >>> from functrain import optim
        >>> p = optim.LookaheadParams.init_synced({"w": torch.ones(1)})
        >>> p.fast["w"], p.slow["w"]
        (tensor([1.]), tensor([1.]))
    """

    fast: Params
    slow: Params

    @classmethod
    def init_synced(cls, params: Params) -> LookaheadParams:
        """Fast and slow both start at ``params``."""
        return cls(fast=params, slow=_tree.map(torch.clone, params))


class LookaheadState(NamedTuple):
    """State of `lookahead`: the fast optimizer's state and the steps since the last sync.

    Example:
        >>> import torch
        >>> from functrain import optim
        >>> opt = optim.lookahead(optim.sgd(0.1), sync_period=5, slow_step_size=0.5)
        >>> opt.init(optim.LookaheadParams.init_synced({"w": torch.ones(1)})).steps_since_sync
        tensor(0)
    """

    fast_state: OptState
    steps_since_sync: torch.Tensor


def lookahead(fast_optimizer: GradientTransformation, sync_period: int, slow_step_size: float,
              reset_state: bool = False) -> GradientTransformation:
    """Lookahead: every ``sync_period`` steps, move the slow params ``slow_step_size`` of the way
    to the fast ones and restart the fast ones from there.

    The params are `LookaheadParams` (fast and slow), and so are the updates it returns: apply
    them with `apply_updates` to the whole `LookaheadParams`. Gradients are those of the fast
    params.

    Args:
        fast_optimizer: the inner optimizer.
        sync_period: steps between syncs, an int >= 1.
        slow_step_size: the slow params' step towards the fast ones, in [0, 1].
        reset_state: re-initialize the fast optimizer's state at every sync.

    Returns:
        A `GradientTransformation` with `LookaheadState`.

    Example:
        >>> import torch
        >>> from functrain import optim
        >>> opt = optim.lookahead(optim.sgd(1.0), sync_period=2, slow_step_size=0.5)
        >>> params = optim.LookaheadParams.init_synced({"w": torch.zeros(1)})
        >>> state = opt.init(params)
        >>> for _ in range(2):
        ...     updates, state = opt.update({"w": torch.ones(1)}, state, params)
        ...     params = optim.apply_updates(params, updates)
        >>> params.fast["w"], params.slow["w"]
        (tensor([-1.]), tensor([-1.]))
    """
    _errors.check_int("sync_period", sync_period, minimum=1)
    _checks.number("slow_step_size", slow_step_size, low=0.0, high=1.0, high_open=False)

    def init_fn(params: Any) -> LookaheadState:
        fast = params.fast if isinstance(params, LookaheadParams) else params
        return LookaheadState(fast_state=fast_optimizer.init(fast),
                              steps_since_sync=zero_count(fast))

    def update_fn(updates: Updates, state: LookaheadState, params: Any = None):
        if not isinstance(params, LookaheadParams):
            raise TypeError(f"lookahead: params: expected LookaheadParams, got "
                            f"{_errors.describe(params)}. HINT: start from "
                            "optim.LookaheadParams.init_synced(params).")
        updates, fast_state = fast_optimizer.update(updates, state.fast_state, params.fast)
        sync = state.steps_since_sync == sync_period - 1
        diff = _tree.map(lambda f, u, s: f + u - s, params.fast, updates, params.slow)
        slow_updates = _tree.map(lambda d: torch.where(sync, slow_step_size * d, 0.0), diff)
        fast_updates = _tree.map(
            lambda u, d: torch.where(sync, u - (1 - slow_step_size) * d, u), updates, diff)
        if reset_state:
            fast_state = select(sync, fast_optimizer.init(params.fast), fast_state)
        return (LookaheadParams(fast=fast_updates, slow=slow_updates),
                LookaheadState(fast_state, (state.steps_since_sync + 1) % sync_period))

    return GradientTransformation(init_fn, update_fn)
