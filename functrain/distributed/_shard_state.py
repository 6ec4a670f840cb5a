"""Building a sharded `functrain.TrainState`: `shard_state` from a whole one, and
`create_sharded_state` from a module on the ``meta`` device, one shard per rank."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from .._errors import check_choice, describe
from . import _env
from ._collectives import broadcast
from ._shard import MODES, ShardLayout
from ._shard_checkpoint import _map_opt_state
from ._shard_optim import ShardedOptimizer

__all__ = ["create_sharded_state", "shard_state"]


def _join() -> Any:
    """The whole world's process group when there are several ranks (started from torchrun's
    environment if needed), else None."""
    import torch.distributed as dist

    if not _env._initialized():
        env = _env.environment()
        if env is None or env.world_size == 1:
            return None
        _env.initialize()
    return dist.group.WORLD if dist.get_world_size() > 1 else None


def _layout(mode: str, group: Any, params: dict[str, torch.Tensor]) -> ShardLayout:
    import torch.distributed as dist

    return ShardLayout(mode, dist.get_world_size(group), dist.get_rank(group), group.group_name,
                       {k: v.shape for k, v in params.items()})


def shard_state(state: Any, *, mode: str = "fsdp") -> Any:
    """Shard a `functrain.TrainState` over the ranks (ZeRO-3 / FSDP, or ZeRO-1).

    Each rank keeps rows ``[r*c, (r+1)*c)`` (``c = ceil(d0 / N)``) of every parameter and of the
    optimizer state that follows it (Adam's moments...), so params + optimizer state take about
    1/N of their size per rank. Rank 0's state is broadcast first (as data parallel does), so
    every rank starts from the same model. `functrain.fit` trains the result with the step
    unchanged: it gathers the full parameters for the step and ``apply_gradients``
    reduce-scatters the gradients and updates this rank's shard (see `sharded_step`), inside
    the one compiled graph. Checkpoints of it hold the full shapes and restore on any number
    of ranks. In a single process (no torchrun) it returns ``state`` unchanged.

    Under torchrun, adding ``state = ft.distributed.shard_state(state)`` before ``fit`` is the
    one change (it starts the process group, as fit would).

    Args:
        state: a `functrain.TrainState` with real (not ``meta``) tensors; for a model too big
            to build whole, use `create_sharded_state`.
        mode: ``"fsdp"`` (parameters, gradients and optimizer state sharded) or ``"zero1"``
            (only the optimizer state sharded; parameters whole on every rank).

    Returns:
        The sharded state (``state.tx`` a `ShardedOptimizer` wrapping the optimizer).

    Raises:
        ValueError: ``mode`` is unknown, the state is already sharded, or holds ``meta``
            tensors.

    Example:
        >>> import torch, functrain as ft
        >>> state = ft.TrainState.create(torch.nn.Linear(4, 2), ft.optim.adamw(1e-3))
        >>> ft.distributed.shard_state(state) is state   # one process: nothing to shard
        True
    """
    check_choice("mode", mode, MODES)
    if isinstance(getattr(state, "tx", None), ShardedOptimizer):
        raise ValueError("state: expected a state that is not sharded yet, got one whose tx is "
                         f"{state.tx!r}.")
    if not (hasattr(state, "params") and hasattr(state, "replace")):
        raise TypeError(f"state: expected a functrain.TrainState, got {describe(state)}.")
    for k, v in state.params.items():
        if v.device.type == "meta":
            raise ValueError(f"state.params[{k!r}]: expected a tensor with data, got a meta "
                             "tensor. HINT: build a model too big for one process with "
                             "functrain.distributed.create_sharded_state(module, optimizer, "
                             "init).")
    group = _join()
    if group is None:
        return state
    state = broadcast(state)  # rank 0's state on every rank, as data parallel starts
    layout = _layout(mode, group, state.params)
    tx = ShardedOptimizer(state.tx, layout, group)
    params = state.params
    if mode == "fsdp":
        params = {k: layout.local(v, v.shape) for k, v in params.items()}
    opt_state = _map_opt_state(tx, state.opt_state, layout.local)
    return state.replace(params=params, opt_state=opt_state, tx=tx)


def create_sharded_state(module: nn.Module, optimizer: Any,
                         init: Callable[[str, torch.Tensor, slice | None], torch.Tensor], *,
                         mode: str = "fsdp", seed: int = 0, device: Any = "cpu",
                         **extras: Any) -> Any:
    """A sharded `functrain.TrainState` for a module built on the ``meta`` device.

    Nothing is ever allocated whole: ``init(name, like, rows)`` is asked, for each parameter,
    only for this rank's rows ``rows`` (a ``slice`` of the first dimension; ``None`` for a
    0-d parameter, asked on rank 0) and returns them; for each ``meta`` buffer it is asked
    the whole tensor (``rows=None``). ``like`` is the ``meta`` tensor (full shape and dtype).
    Make ``init`` depend on (name, row) only and every world size builds the same model.
    In a single process ``init`` is asked every row, and the state is a plain one.

    Args:
        module: the model, e.g. built under ``with torch.device("meta"):``.
        optimizer: a `functrain.optim.GradientTransformation` (elementwise; see
            `ShardedOptimizer`).
        init: ``init(name, like, rows) -> tensor`` of shape ``like[rows].shape``.
        mode: ``"fsdp"`` or ``"zero1"`` (as in `shard_state`; ``"zero1"`` keeps whole
            parameters, so it materialises them).
        seed: seeds ``state.rng``.
        device: where the shards live.
        **extras: initial entries of ``state.extras``.

    Returns:
        A `functrain.TrainState`, sharded on several ranks.

    Example:
        >>> import torch, functrain as ft
        >>> with torch.device("meta"):
        ...     model = torch.nn.Linear(4, 3)
        >>> def init(name, like, rows):
        ...     return torch.full(like[rows].shape, 0.5)
        >>> state = ft.distributed.create_sharded_state(model, ft.optim.adamw(1e-3), init)
        >>> state.params["weight"].sum().item()   # one process: every row, 12 x 0.5
        6.0
    """
    from .. import random as _random
    from .._bridge import split_module
    from .._state import TrainState

    check_choice("mode", mode, MODES)
    if not callable(init):
        raise TypeError(f"init: expected a function init(name, like, rows), got {describe(init)}.")
    params, buffers = split_module(module)
    frozen = {k for k, p in module.named_parameters() if not p.requires_grad}
    buffers = {**buffers, **{k: params.pop(k) for k in list(params) if k in frozen}}
    group = _join()

    def whole(k: str, like: torch.Tensor) -> torch.Tensor:
        if like.device.type != "meta":
            return like.to(device)
        return _call(init, k, like, slice(0, like.shape[0]) if like.ndim else None, device)

    buffers = {k: whole(k, v) for k, v in buffers.items()}
    if group is None or mode == "zero1":
        full = {k: whole(k, v) for k, v in params.items()}
    if group is None:
        tx: Any = optimizer
        params, opt_state = full, optimizer.init(full)
    else:
        layout = _layout(mode, group, params)
        tx = ShardedOptimizer(optimizer, layout, group)
        if mode == "zero1":
            params = full
            opt_state = optimizer.init({k: layout.local(v, v.shape) for k, v in full.items()})
        else:
            params = {k: _shard_init(init, k, v, layout, device) for k, v in params.items()}
            opt_state = optimizer.init(params)
    dev = torch.device(device)
    return TrainState(step=torch.zeros((), dtype=torch.int64, device=dev), params=params,
                      buffers=buffers, opt_state=opt_state, rng=_random.key(seed, device=dev),
                      extras=extras, tx=tx, module=module)


def _call(init: Callable[..., Any], k: str, like: torch.Tensor, rows: slice | None,
          device: Any) -> torch.Tensor:
    want = like[rows].shape if rows is not None else like.shape
    t = init(k, like, rows)
    if not isinstance(t, torch.Tensor) or t.shape != want:
        raise ValueError(f"init({k!r}, like, rows={rows}): expected a tensor of shape "
                         f"{tuple(want)}, got {describe(t)}.")
    return t.to(device=device, dtype=like.dtype)


def _shard_init(init: Callable[..., Any], k: str, like: torch.Tensor, layout: ShardLayout,
                device: Any) -> torch.Tensor:
    shape = like.shape
    c, n = layout.rows(shape), layout.valid_rows(shape)
    rest = tuple(shape[1:])
    parts = []
    if n:
        if like.ndim:
            start = layout.rank * c
            parts.append(_call(init, k, like, slice(start, start + n), device))
        else:
            parts.append(_call(init, k, like, None, device).reshape(1))
    if n < c:
        parts.append(torch.zeros((c - n, *rest), dtype=like.dtype, device=device))
    return parts[0] if len(parts) == 1 else torch.cat(parts)
