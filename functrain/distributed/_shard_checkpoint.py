"""The checkpoint view of a sharded state: its shards as DTensors of the full shapes
(``Shard(0)``), which `torch.distributed.checkpoint` saves as whole tensors and reshards on
load, whatever number of ranks reads them."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import optree
import torch

from .. import tree as _tree
from ._collectives import broadcast

__all__ = ["from_checkpoint", "opt_owners", "to_checkpoint"]

_MARK = 1 << 20  # meta rows that tag which parameter an optimizer-state leaf follows


def opt_owners(tx: Any) -> list[str | None]:
    """For each leaf of the inner optimizer's state, the parameter it follows (None: a leaf
    of its own, such as a step count, kept whole on every rank). Found by initialising the
    inner optimizer on ``meta`` shards whose first dimension names the parameter."""
    owners = getattr(tx, "_owners", None)
    if owners is not None:
        return owners
    from .._compat import real_tensors

    lay = tx.layout
    names = list(lay.shapes)
    with real_tensors():
        marked = {}
        for i, k in enumerate(names):
            shape = lay.shard_shape(lay.shapes[k])
            marked[k] = torch.empty((_MARK + i, *shape[1:]), device="meta")
        ref = tx.inner.init(marked)
    owners = []
    for leaf in _tree.leaves(ref):
        owner = None
        if isinstance(leaf, torch.Tensor) and leaf.ndim >= 1 and leaf.shape[0] >= _MARK:
            k = names[leaf.shape[0] - _MARK]
            if leaf.shape[1:] == lay.shard_shape(lay.shapes[k])[1:]:
                owner = k
        owners.append(owner)
    tx._owners = owners  # type: ignore[attr-defined]
    return owners


def _map_opt_state(tx: Any, opt_state: Any,
                   fn: Callable[[torch.Tensor, torch.Size], Any]) -> Any:
    """``opt_state`` with ``fn(leaf, full shape)`` applied to every leaf that follows a param."""
    owners = opt_owners(tx)
    leaves = _tree.leaves(opt_state)
    if len(leaves) != len(owners):
        raise ValueError(f"state.opt_state: expected {len(owners)} leaves as the optimizer's "
                         f"init builds, got {len(leaves)}. HINT: build the state with "
                         "TrainState.create(module, optimizer).")
    out = [x if k is None else fn(x, tx.layout.shapes[k]) for x, k in zip(leaves, owners)]
    return optree.tree_unflatten(_tree.structure(opt_state), out)


def _mesh(tx: Any) -> Any:
    mesh = getattr(tx, "_mesh", None)
    if mesh is None:
        import torch.distributed as dist
        from torch.distributed.device_mesh import DeviceMesh

        kind = "cuda" if "nccl" in str(dist.get_backend(tx.group)).lower() else "cpu"
        mesh = DeviceMesh.from_group(tx.group, kind)
        tx._mesh = mesh  # type: ignore[attr-defined]
    return mesh


def to_checkpoint(state: Any) -> Any:
    """``state`` with every sharded leaf as a DTensor of its full shape (``Shard(0)``), which
    `torch.distributed.checkpoint` saves as one tensor and reshards on load; 0-d parameters
    (and their optimizer leaves) become whole tensors, broadcast from rank 0."""
    from torch.distributed.tensor import DTensor, Shard

    tx: Any = state.tx
    lay = tx.layout
    mesh = _mesh(tx)
    scalars: list[torch.Tensor] = []

    def view(x: torch.Tensor, shape: torch.Size) -> Any:
        if not len(shape):
            scalars.append(x)
            return x
        local = x.narrow(0, 0, lay.valid_rows(shape))
        stride = torch.empty(shape, device="meta").stride()
        return DTensor.from_local(local, mesh, [Shard(0)], run_check=False, shape=shape,
                                  stride=stride)

    params = state.params
    if lay.mode == "fsdp":
        params = {k: view(v, lay.shapes[k]) if k in lay.shapes else v for k, v in params.items()}
    opt_state = _map_opt_state(tx, state.opt_state, view)
    if scalars:  # rank 0 holds them
        whole = dict(zip(map(id, scalars), broadcast([x[0] for x in scalars])))
        def fix(x: Any) -> Any:
            return whole.get(id(x), x)
        params = {k: fix(v) for k, v in params.items()}
        opt_state = _tree.map(fix, opt_state)
    return state.replace(params=params, opt_state=opt_state)


def from_checkpoint(view: Any, tx: Any) -> Any:
    """The sharded state from its checkpoint view (DTensors, or whole tensors when DCP read a
    single-process checkpoint whole)."""
    from torch.distributed.tensor import DTensor

    lay = tx.layout

    def back(x: torch.Tensor, shape: torch.Size) -> torch.Tensor:
        if isinstance(x, DTensor):
            local = x.to_local()
            c, n = lay.rows(shape), local.shape[0]
            if n == c:
                return local
            pad = torch.zeros((c - n, *shape[1:]), dtype=local.dtype, device=local.device)
            return torch.cat([local, pad])
        return lay.local(x, shape)

    params = view.params
    if lay.mode == "fsdp":
        params = {k: back(v, lay.shapes[k]) if k in lay.shapes else v for k, v in params.items()}
    return view.replace(params=params, opt_state=_map_opt_state(tx, view.opt_state, back))
