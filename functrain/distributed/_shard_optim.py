"""`ShardedOptimizer`: the optimizer of a sharded state (what `shard_state` puts in ``tx``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from .. import tree as _tree
from .._errors import describe
from ._shard import ShardLayout, gather, reduce_scatter
from ._shard_checkpoint import from_checkpoint, to_checkpoint

__all__ = ["ShardedOptimizer"]


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

    Example:
        >>> import torch, functrain as ft
        >>> from functrain.distributed import ShardedOptimizer, ShardLayout
        >>> lay = ShardLayout("fsdp", 2, 0, "", {"w": torch.Size([3, 2])})
        >>> tx = ShardedOptimizer(ft.optim.adam(1e-3), lay, group=None)
        >>> [tuple(t.shape) for t in ft.tree.leaves(tx.init({"w": torch.ones(3, 2)}))]
        [(), (2, 2), (2, 2)]
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
        """``state`` with its shards as DTensors of the full shapes (`to_checkpoint`)."""
        return to_checkpoint(state)

    def from_checkpoint_view(self, state: Any) -> Any:
        """The sharded state back from a restored checkpoint view (`from_checkpoint`)."""
        return from_checkpoint(state, self)
