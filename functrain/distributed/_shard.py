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

from .. import tree as _tree
from .._errors import describe

__all__ = ["ShardLayout", "ShardedOptimizer", "layout_of", "sharded_step"]

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


def _sum_over_ranks(group_name: str) -> Callable[[torch.Tensor], torch.Tensor]:
    def reduce(total: torch.Tensor) -> torch.Tensor:
        from torch.distributed import _functional_collectives as fc

        return fc.wait_tensor(fc.all_reduce(total, "sum", group_name))

    return reduce


class ShardedOptimizer:
    """An optimizer over sharded parameters: what `shard_state` puts in ``state.tx``.

    ``init`` and ``update`` follow `functrain.optim.GradientTransformation` on *full* params
    and gradients (``update`` returns full updates, at the cost of an all-gather of them);
    `functrain.TrainState.apply_gradients` calls `apply_to_params` instead, which
    reduce-scatters the gradients and updates this rank's shard only. The wrapped optimizer
    (``inner``) sees shards; within its update a global norm (``clip_by_global_norm``) is
    summed over the ranks, so it is the norm of the whole gradient.

    The inner optimizer must act on each element on its own, apart from global norms: SGD,
    momentum, Adam(W), Lion, RMSprop, weight decay and masks, clipping by value or global norm
    all qualify. Per-parameter norms (LARS, LAMB), factored moments (Adafactor) and
    orthogonalisation (Muon) would see shards, not parameters: not supported.

    Attributes:
        inner: the wrapped `functrain.optim.GradientTransformation` (the user's optimizer).
        layout: the `ShardLayout`.
        group: the ``torch.distributed`` process group.
    """

    def __init__(self, inner: Any, layout: ShardLayout, group: Any) -> None:
        self.inner, self.layout, self.group = inner, layout, group

    def __repr__(self) -> str:
        lay = self.layout
        return (f"ShardedOptimizer(mode={lay.mode!r}, rank={lay.rank}, world={lay.world}, "
                f"params={len(lay.shapes)})")

    def _local(self, params: dict[str, torch.Tensor], copy: bool = True
               ) -> dict[str, torch.Tensor]:
        lay = self.layout
        return {k: lay.local(v, lay.shapes[k], copy=copy) if k in lay.shapes else v
                for k, v in params.items()}

    def _inner_update(self, grads: Any, opt_state: Any, params: Any) -> tuple[Any, Any]:
        reducers = _tree._SQUARED_NORM_REDUCERS
        reducers.append(_sum_over_ranks(self.layout.group_name))
        try:
            return self.inner.update(grads, opt_state, params)
        finally:
            reducers.pop()

    def init(self, params: dict[str, torch.Tensor]) -> Any:
        """The inner optimizer's state for this rank's shard of the full ``params``."""
        return self.inner.init(self._local(params))

    def update(self, updates: Any, state: Any, params: Any = None) -> tuple[Any, Any]:
        """Full gradients to full updates (reduce-scatter, shard update, all-gather)."""
        self._check_grads(updates)
        grads = reduce_scatter(self.layout, updates)
        local = None if params is None else self._local(params)
        out, state = self._inner_update(grads, state, local)
        return gather(self.layout, out), state

    def apply_to_params(self, grads: dict[str, torch.Tensor], opt_state: Any,
                        params: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], Any]:
        """New params and optimizer state from full ``grads`` and the full ``params``.

        Returns this rank's new parameter shards (``mode="fsdp"``), or the new full
        parameters (``"zero1"``, one all-gather), and the new (sharded) optimizer state.
        """
        from ..optim import apply_updates

        self._check_grads(grads)
        shard_grads = reduce_scatter(self.layout, grads)
        local = self._local(params, copy=False)  # read only: apply_updates is out of place
        updates, opt_state = self._inner_update(shard_grads, opt_state, local)
        new = apply_updates(local, updates)
        if self.layout.mode == "zero1":
            new = gather(self.layout, new)
        return new, opt_state

    def _check_grads(self, grads: Any) -> None:
        if torch.compiler.is_compiling():
            return
        shapes = self.layout.shapes
        if not isinstance(grads, dict) or list(grads) != list(shapes):
            raise ValueError(f"grads: expected a dict of the {len(shapes)} parameters "
                             f"{list(shapes)[:3]}..., got {describe(grads)}.")
        for k, g in grads.items():
            if g.shape != shapes[k]:
                hint = (" HINT: the step saw this rank's shard, not the full parameter: run it "
                        "through functrain.distributed.sharded_step (fit does)."
                        if g.shape == self.layout.shard_shape(shapes[k]) else "")
                raise ValueError(f"grads[{k!r}]: expected the full shape {tuple(shapes[k])}, "
                                 f"got {tuple(g.shape)}.{hint}")

    # -- checkpoints (`functrain.checkpoint.save` / `restore` call these) ------------------
    def checkpoint_view(self, state: Any) -> Any:
        from ._shard_state import to_checkpoint

        return to_checkpoint(state)

    def from_checkpoint_view(self, state: Any) -> Any:
        from ._shard_state import from_checkpoint

        return from_checkpoint(state, self)


def layout_of(state: Any) -> ShardLayout | None:
    """The `ShardLayout` of a sharded state, or None for any other state."""
    tx = getattr(state, "tx", None)
    return tx.layout if isinstance(tx, ShardedOptimizer) else None


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
