"""JAX-style collectives over pytrees: `pmean` and `psum`, traced into the compiled step.

Both are built on ``torch.distributed``'s functional collectives
(``torch.distributed._functional_collectives``, through `functrain._compat`), which Dynamo
traces as graph nodes: inside
``torch.compile(fullgraph=True)`` a `pmean` of the gradients is part of the one compiled graph
(no graph break), so inductor can schedule the communication with the computation around it.
Outside compiled code they run eagerly and return ordinary tensors.

With no process group, or a group of one rank, both are the identity: a step written with
`pmean` runs unchanged in a single process.

The leaves of one dtype and device are packed into flat buffers and each buffer is reduced
with one collective, as ``DistributedDataParallel`` buckets its gradients: a model with
hundreds of parameters costs a few all-reduces, not hundreds. Like DDP's, the buckets take the
leaves last to first (the order in which a backward pass produces gradients), the first up to
`FIRST_BUCKET_BYTES` (1 MiB), the others up to `BUCKET_BYTES` (25 MiB). On the CPU (gloo),
`functrain._backend.compile_graph` compiles a graph that all-reduces with Inductor's
comm/compute overlap pass, so a bucket travels while the gradients of earlier layers are
still being computed.
"""

from __future__ import annotations

from typing import Any

import torch

from .. import tree as _tree
from .._errors import describe

__all__ = ["all_gather", "broadcast", "fold_in_rank", "pmean", "psum"]

FIRST_BUCKET_BYTES = 1 << 20
BUCKET_BYTES = 25 << 20
# Measured (benchmarks/distributed.py's MLP, 2.7 MB of gradients, gloo, 2 processes on 2
# cores shared with other jobs): one 2.7 MB bucket made the step 1.6-2.2x slower than a
# 1.05 + 1.6 MB split (cause not established; gloo alone takes as long for either).


def _group(group: Any = None) -> Any:
    """The process group to reduce over, or None when there is nothing to reduce."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return None
    if group is None:
        group = dist.group.WORLD
    if dist.get_world_size(group) == 1:
        return None
    return group


def _reduce(tree: Any, op: str, group: Any, name: str) -> Any:
    pg = _group(group)
    if pg is None:
        return tree
    import torch.distributed as dist

    from .._compat import start_all_reduce, wait_collective

    world = dist.get_world_size(pg)
    leaves = _tree.leaves(tree)
    buckets: dict[tuple[torch.dtype, torch.device], list[int]] = {}
    for i, x in enumerate(leaves):
        bad = not isinstance(x, torch.Tensor) or x.dtype == torch.bool or x.is_complex()
        if bad:
            _bad_leaf(tree, i, name)
        buckets.setdefault((x.dtype, x.device), []).append(i)
    out: list[Any] = list(leaves)
    # Every bucket's all-reduce starts before the first is waited on, so the process group
    # works on several at once (as DDP's buckets do).
    started = []
    for (dtype, _), idx in _split(buckets, leaves):
        xs = [out[i] for i in idx]
        flat = torch.cat([x.reshape(-1) for x in xs]) if len(xs) > 1 else xs[0].reshape(-1)
        reduce_op = "avg" if (op == "mean" and dtype.is_floating_point) else "sum"
        # By name: passing the group object makes Dynamo guard on a compiler config entry
        # that torch.compile / DDP elsewhere in the process can change (a recompile).
        started.append((dtype, idx, xs, start_all_reduce(flat, reduce_op, pg.group_name)))
    for dtype, idx, xs, pending in started:
        total = wait_collective(pending)
        if op == "mean" and not dtype.is_floating_point:
            # gloo has no integer average: sum, then the floor of the mean (exact when the
            # ranks agree, as step counters do).
            total = torch.div(total, world, rounding_mode="floor")
        start = 0
        for i, x in zip(idx, xs):
            n = x.numel()
            out[i] = total[start:start + n].view(x.shape)
            start += n
    return _unflatten(tree, out)


def _split(buckets: dict[Any, list[int]], leaves: list[Any]) -> list[tuple[Any, list[int]]]:
    """Each dtype's leaves, last to first, cut into buckets of `FIRST_BUCKET_BYTES`, then
    `BUCKET_BYTES` (a bucket closes once it reaches its size; one leaf may exceed it)."""
    out = []
    for key, idx in buckets.items():
        cap, bucket, size = FIRST_BUCKET_BYTES, [], 0
        for i in reversed(idx):
            bucket.append(i)
            size += leaves[i].numel() * leaves[i].element_size()
            if size >= cap:
                out.append((key, bucket))
                cap, bucket, size = BUCKET_BYTES, [], 0
        if bucket:
            out.append((key, bucket))
    return out


def _bad_leaf(tree: Any, i: int, name: str) -> None:
    path = f"{name} leaf {i}"
    if not torch.compiler.is_compiling():
        path = _tree.leaves_with_path(tree, name)[i][0]
    x = _tree.leaves(tree)[i]
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{path}: expected a tensor, got {describe(x)}. HINT: {name} reduces "
                        "tensors across ranks; keep Python values out of it.")
    raise TypeError(f"{path}: expected a real floating or integer tensor, got {describe(x)}.")


def _unflatten(tree: Any, leaves: list[Any]) -> Any:
    it = iter(leaves)
    return _tree.map(lambda _: next(it), tree)


def pmean(tree: Any, *, group: Any = None) -> Any:
    """The mean of ``tree`` over the ranks of ``group`` (default: all ranks), leaf by leaf.

    Use it on the gradients inside the step: averaged gradients make every rank take the same
    optimizer step, so the parameters stay identical, and the result equals one process
    stepping on the global batch (the concatenation of the ranks' batches, each of equal size).
    Inside ``torch.compile`` the all-reduce is part of the compiled graph.

    Integer leaves are summed and floor-divided by the number of ranks (exact when they are
    equal on every rank, like step counters). The identity without a process group or with one
    rank.

    Args:
        tree: a pytree of floating or integer tensors (gradients, buffers, a 0-d loss).
        group: a ``torch.distributed`` process group; default: the whole world.

    Returns:
        The averaged tree, same structure, shapes and dtypes.

    Raises:
        TypeError: a leaf is not a tensor, or is a bool/complex tensor; names the leaf path.

    Example:
        >>> import torch, functrain as ft
        >>> grads = {"w": torch.ones(2, 2)}
        >>> ft.distributed.pmean(grads)["w"].sum().item()   # one process: unchanged
        4.0
    """
    return _reduce(tree, "mean", group, "pmean(tree)")


def psum(tree: Any, *, group: Any = None) -> Any:
    """The sum of ``tree`` over the ranks of ``group``, leaf by leaf (traced like `pmean`).

    Args:
        tree: a pytree of floating or integer tensors (counts, sums of losses, ...).
        group: a process group; default: the whole world.

    Returns:
        The summed tree; the identity without a process group or with one rank.

    Example:
        >>> import torch, functrain as ft
        >>> ft.distributed.psum({"correct": torch.tensor(7)})
        {'correct': tensor(7)}
    """
    return _reduce(tree, "sum", group, "psum(tree)")


def fold_in_rank(key: torch.Tensor, *, group: Any = None) -> torch.Tensor:
    """Fold this rank's index into a `functrain.random` key, so each rank draws its own numbers.

    Data parallel dropout needs a different mask on every rank (each sees different examples)
    and the same masks when the run is repeated: ``fold_in_rank(fold_in(state.rng, state.step))``
    is both. The identity without a process group or with one rank, so a single-process run
    draws what it drew before.

    Args:
        key: a `functrain.random` key.
        group: the group whose rank is folded in; default: the whole world.

    Returns:
        ``functrain.random.fold_in(key, rank)`` on two or more ranks, else ``key``.

    Example:
        >>> import functrain as ft
        >>> key = ft.random.key(0)
        >>> bool((ft.distributed.fold_in_rank(key) == key).all())   # one process: unchanged
        True
    """
    pg = _group(group)
    if pg is None:
        return key
    import torch.distributed as dist

    from .. import random as _random

    return _random.fold_in(key, dist.get_rank(pg))


def _pack(xs: list[torch.Tensor], device: torch.device) -> torch.Tensor:
    """Concatenate the bytes of ``xs`` into one uint8 tensor (exact for every dtype)."""
    parts = [x.detach().to(device).contiguous().reshape(-1).view(torch.uint8) for x in xs]
    return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.uint8, device=device)


def _unpack(buf: torch.Tensor, like: list[torch.Tensor]) -> list[torch.Tensor]:
    out, start = [], 0
    for x in like:
        n = x.numel() * x.element_size()
        # A copy, not a view: its offset is then aligned for any dtype, and tensors sharing
        # one buffer (with different dtypes) could not be updated in place by a compiled step
        # (aot_autograd refuses such aliased inputs).
        part = buf[start:start + n].clone().view(x.dtype).reshape(x.shape)
        out.append(part.to(x.device))
        start += n
    return out


def _comm_device(pg: Any, xs: list[torch.Tensor]) -> torch.device:
    """CUDA when the leaves live there (NCCL), else the CPU (gloo)."""
    for x in xs:
        if x.device.type == "cuda":
            return x.device
    return torch.device("cpu")


def all_gather(tree: Any, *, group: Any = None) -> list[Any]:
    """Every rank's ``tree``, in rank order, with one collective (eager; not for compiled code).

    The leaves are packed into one byte buffer, so any dtypes gather exactly, bit for bit.
    All ranks must pass trees of the same structure, shapes and dtypes.

    Args:
        tree: a pytree of tensors.
        group: a process group; default: the whole world.

    Returns:
        ``[tree of rank 0, tree of rank 1, ...]``; ``[tree]`` without a process group.

    Example:
        >>> import torch, functrain as ft
        >>> ft.distributed.all_gather({"n": torch.tensor(3)})
        [{'n': tensor(3)}]
    """
    pg = _group(group)
    if pg is None:
        return [tree]
    import torch.distributed as dist

    leaves = _tree.leaves(tree)
    dev = _comm_device(pg, leaves)
    buf = _pack(leaves, dev)
    bufs = [torch.empty_like(buf) for _ in range(dist.get_world_size(pg))]
    dist.all_gather(bufs, buf, group=pg)
    return [_unflatten(tree, _unpack(b, leaves)) for b in bufs]


def broadcast(tree: Any, *, src: int = 0, group: Any = None) -> Any:
    """Rank ``src``'s ``tree`` on every rank, with one collective (eager; new tensors).

    Use it to start all ranks from the same state (e.g. parameters initialised with different
    seeds), as ``DistributedDataParallel`` does when it wraps a model.

    Args:
        tree: a pytree of tensors of the same structure, shapes and dtypes on every rank.
        src: the rank whose values everyone gets.
        group: a process group; default: the whole world.

    Returns:
        A tree of new tensors holding ``src``'s values; ``tree`` itself without a group.

    Example:
        >>> import torch, functrain as ft
        >>> ft.distributed.broadcast({"w": torch.ones(2)})
        {'w': tensor([1., 1.])}
    """
    pg = _group(group)
    if pg is None:
        return tree
    import torch.distributed as dist

    leaves = _tree.leaves(tree)
    buf = _pack(leaves, _comm_device(pg, leaves))
    dist.broadcast(buf, src=dist.get_global_rank(pg, src) if pg is not dist.group.WORLD
                   else src, group=pg)
    return _unflatten(tree, _unpack(buf, leaves))
