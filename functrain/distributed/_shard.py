"""Sharded state (ZeRO-3 / FSDP, and ZeRO-1): each rank keeps 1/N of the training state.

A parameter of shape ``(d0, *rest)`` is cut along its first dimension, as
``torch.chunk(d0, N)`` would: rank ``r`` keeps rows ``[r*c, (r+1)*c)`` with ``c = ceil(d0 / N)``,
zero-padded to ``c`` rows (a 0-d parameter is seen as shape ``(1,)``). The optimizer state of an
elementwise optimizer (SGD, momentum, Adam, AdamW, Lion, ...) follows its parameter, so it is
sharded the same way. Inside the step (`sharded_step`):

* the full parameters are gathered with one ``all_gather_tensor`` per dtype, the user's step
  runs on them unchanged, and
* ``state.apply_gradients(grads)`` reduce-scatters the full gradients (one
  ``reduce_scatter_tensor`` per dtype, averaged) and updates this rank's shard only
  (`ShardedOptimizer.apply_to_params`).

Both collectives are ``torch.distributed``'s functional ones, so under ``torch.compile`` they are
nodes of the one compiled graph. A global norm computed by the optimizer (clipping by global
norm) sums its squares over the ranks: it is the norm of the whole, unsharded gradient.

ZeRO-1 (``mode="zero1"``) keeps the parameters whole on every rank and shards only the optimizer
state: gradients are reduce-scattered, each rank updates its share and the new parameters are
all-gathered.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import torch

__all__ = ["ShardLayout", "gather", "layout_of", "reduce_scatter", "sharded_step"]

MODES = ("fsdp", "zero1")


@dataclasses.dataclass(frozen=True, eq=False)
class ShardLayout:
    """How the parameters are cut over the ranks: their full shapes, the world and this rank.

    Attributes:
        mode: ``"fsdp"`` (params, grads and optimizer state sharded) or ``"zero1"``
            (optimizer state sharded, params whole).
        world: the number of ranks.
        rank: this rank.
        group_name: the process group's name (what the functional collectives take).
        shapes: the full shape of every parameter, by name, in the params' order.

    Example:
        >>> import torch
        >>> from functrain.distributed import ShardLayout
        >>> lay = ShardLayout("fsdp", 2, 1, "", {"w": torch.Size([3, 2])})  # rank 1 of 2
        >>> lay.shard_shape(lay.shapes["w"]), lay.valid_rows(lay.shapes["w"])
        (torch.Size([2, 2]), 1)
        >>> lay.local(torch.arange(6.0).reshape(3, 2), lay.shapes["w"])  # row 2, then padding
        tensor([[4., 5.],
                [0., 0.]])
    """

    mode: str
    world: int
    rank: int
    group_name: str
    shapes: dict[str, torch.Size]

    def rows(self, shape: torch.Size) -> int:
        """Rows of a parameter of ``shape`` that each rank keeps (``ceil(d0 / world)``)."""
        d0 = shape[0] if len(shape) else 1
        return -(-d0 // self.world)

    def shard_shape(self, shape: torch.Size) -> torch.Size:
        """The shape of one rank's shard of a parameter of full ``shape``."""
        return torch.Size((self.rows(shape), *shape[1:]))

    def valid_rows(self, shape: torch.Size, rank: int | None = None) -> int:
        """Rows of ``rank``'s shard that hold data (the rest is zero padding)."""
        d0 = shape[0] if len(shape) else 1
        c = self.rows(shape)
        r = self.rank if rank is None else rank
        return max(0, min(c, d0 - r * c))

    def local(self, x: torch.Tensor, shape: torch.Size, *, copy: bool = True) -> torch.Tensor:
        """This rank's shard of ``x`` (full ``shape``): its rows, zero-padded; in storage of
        its own (``copy=True``: the full tensor can be freed) or, where no padding is needed,
        a view of ``x``."""
        d0 = shape[0] if len(shape) else 1
        x1 = x.reshape(d0, *shape[1:])
        c, n = self.rows(shape), self.valid_rows(shape)
        if n == c:
            part = x1.narrow(0, self.rank * c, c)
            return part.clone() if copy else part
        pad = torch.zeros((c - n, *shape[1:]), dtype=x.dtype, device=x.device)
        if n == 0:
            return pad
        return torch.cat([x1.narrow(0, self.rank * c, n), pad])

    def full(self, shards: torch.Tensor, shape: torch.Size) -> torch.Tensor:
        """The full tensor from the ranks' shards stacked as ``(world * rows, *rest)``."""
        d0 = shape[0] if len(shape) else 1
        return shards.narrow(0, 0, d0).reshape(shape)


# Parameters of at least this many elements get collectives of their own: gathered along the
# first dimension, a parameter comes out whole and contiguous (no copy out of a flat buffer),
# and the compiler may schedule each one by the compute that needs it. Smaller ones share one
# collective per dtype (as DistributedDataParallel buckets gradients).
_OWN_COLLECTIVE = 1 << 16


def _buckets(names: list[str], tensors: dict[str, torch.Tensor]) -> dict[Any, list[str]]:
    out: dict[Any, list[str]] = {}
    for k in names:
        t = tensors[k]
        alone = k if t.numel() >= _OWN_COLLECTIVE else None
        out.setdefault((t.dtype, t.device, alone), []).append(k)
    return out


def gather(layout: ShardLayout, shards: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The full parameters from every rank's shards: one ``all_gather_tensor`` per dtype."""
    from torch.distributed import _functional_collectives as fc

    out = dict(shards)
    w = layout.world
    for _, names in _buckets(list(layout.shapes), shards).items():
        flat = (shards[names[0]].reshape(-1) if len(names) == 1
                else torch.cat([shards[k].reshape(-1) for k in names]))
        # Missing public API: a traceable (functional) all-gather; dist.all_gather_into_tensor
        # works in place and breaks the graph.
        every = fc.wait_tensor(fc.all_gather_single(flat, 0, layout.group_name))
        if len(names) == 1:  # rank-major rows are the parameter's rows: no copy
            k = names[0]
            out[k] = layout.full(every.view(w * shards[k].shape[0], *shards[k].shape[1:]),
                                 layout.shapes[k])
            continue
        every = every.view(w, flat.numel())
        start = 0
        for k in names:
            shape = layout.shapes[k]
            n = shards[k].numel()
            part = every[:, start:start + n].reshape(w * shards[k].shape[0], *shape[1:])
            out[k] = layout.full(part, shape)
            start += n
    return out


def reduce_scatter(layout: ShardLayout, grads: dict[str, torch.Tensor]
                   ) -> dict[str, torch.Tensor]:
    """This rank's shard of the rank-averaged gradients: one ``reduce_scatter_tensor`` per dtype."""
    from torch.distributed import _functional_collectives as fc

    out = dict(grads)
    w = layout.world
    for _, names in _buckets(list(layout.shapes), grads).items():
        rows = []
        for k in names:
            shape = layout.shapes[k]
            c = layout.rows(shape)
            d0 = shape[0] if len(shape) else 1
            g = grads[k].reshape(d0, *shape[1:])
            if w * c != d0:
                g = torch.cat([g, torch.zeros((w * c - d0, *shape[1:]), dtype=g.dtype,
                                              device=g.device)])
            rows.append(g.reshape(w, -1))
        flat = rows[0].reshape(-1) if len(rows) == 1 else torch.cat(rows, dim=1).reshape(-1)
        mine = fc.wait_tensor(fc.reduce_scatter_single(flat, "avg", 0, layout.group_name))
        start = 0
        for k, r in zip(names, rows):
            n = r.shape[1]
            out[k] = mine[start:start + n].view(layout.shard_shape(layout.shapes[k]))
            start += n
    return out


def layout_of(state: Any) -> ShardLayout | None:
    """The `ShardLayout` of a sharded state (its ``tx`` a `ShardedOptimizer`), else None."""
    layout = getattr(getattr(state, "tx", None), "layout", None)
    return layout if isinstance(layout, ShardLayout) else None


def sharded_step(step_fn: Callable[[Any, Any], Any]) -> Callable[[Any, Any], Any]:
    """Run ``step_fn`` on a sharded state: full parameters in, this rank's shards out.

    The returned step gathers the full parameters (one all-gather per dtype, inside the
    compiled graph), calls ``step_fn`` on a state holding them, and keeps this rank's shard of
    the parameters it returns (``apply_gradients`` already returns the shards; parameters
    changed otherwise are cut here). On a state that is not sharded (one process) it is
    ``step_fn`` itself. `functrain.fit` does this on its own; a hand-written loop wraps its
    step once.

    Args:
        step_fn: ``step(state, batch) -> (state, metrics)``, written for one device.

    Returns:
        A step with the same signature.

    Example:
        >>> import torch, functrain as ft
        >>> model = torch.nn.Linear(3, 1)
        >>> def step(state, batch):
        ...     def loss_fn(params):
        ...         return ft.call(model, params, state.buffers, batch)[0].pow(2).mean()
        ...     return state.apply_gradients(torch.func.grad(loss_fn)(state.params)), {}
        >>> state = ft.distributed.shard_state(ft.TrainState.create(model, ft.optim.sgd(0.1)))
        >>> state, _ = ft.distributed.sharded_step(step)(state, torch.ones(4, 3))
        >>> int(state.step)   # one process: the state is not sharded, the step runs as it is
        1
    """
    if getattr(step_fn, "_ft_sharded", False):
        return step_fn

    def step(state: Any, batch: Any) -> Any:
        layout = layout_of(state)
        if layout is None or layout.mode != "fsdp":
            return step_fn(state, batch)
        full = gather(layout, state.params)
        new_state, metrics = step_fn(state.replace(params=full), batch)
        params = getattr(new_state, "params", None)
        if isinstance(params, dict) and set(layout.shapes) <= set(params):
            params = dict(params)
            for k, shape in layout.shapes.items():
                p = params[k]
                if p.shape == shape:  # a full parameter (possibly the gathered one): cut
                    params[k] = layout.local(p, shape)
                elif p.shape != layout.shard_shape(shape):
                    raise ValueError(f"state.params[{k!r}]: expected the full shape "
                                     f"{tuple(shape)} or the shard shape "
                                     f"{tuple(layout.shard_shape(shape))} after the step, "
                                     f"got {tuple(p.shape)}.")
            new_state = new_state.replace(params=params)
        return new_state, metrics

    step.__wrapped__ = step_fn  # type: ignore[attr-defined]
    step._ft_sharded = True  # type: ignore[attr-defined]
    return step
