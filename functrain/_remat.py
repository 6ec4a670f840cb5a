"""Rematerialisation (gradient checkpointing) inside a pure step: `remat`, like ``jax.checkpoint``.

``torch.utils.checkpoint`` does not run inside ``torch.func.grad`` (it relies on saved-tensor
hooks, which torch.func refuses). `remat` instead wraps the function in an
``autograd.Function`` that saves only the function's inputs and, in the backward pass, runs the
function again under ``torch.func.vjp``. Inside a compiled step the wrapped call is opaque to
Dynamo (``torch.compiler.nonstrict_trace``) and is traced by AOTAutograd, which sees the
recomputation in the backward part of the one graph; Inductor frees the function's inner
activations after the forward and recomputes them where the backward needs them.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import optree
import torch

from . import _compat
from ._errors import describe
from .tree import NAMESPACE

__all__ = ["INDUCTOR_OPTIONS", "remat", "traced_in"]

# Inductor's reorder_for_locality pass moves part of the recomputation back next to the
# forward (8 transformer blocks: 153 MB alive at the peak instead of 82 MB, no faster);
# `_backend.compile_graph` turns it off for graphs that call a remat wrapper (`traced_in`).
INDUCTOR_OPTIONS = {"reorder_for_locality": False}


def _differentiable(t: torch.Tensor) -> bool:
    return t.is_floating_point() or t.is_complex()


def _restricted(fn: Callable[..., tuple[torch.Tensor, ...]], inputs: tuple[torch.Tensor, ...],
                wrt: list[int]) -> Callable[..., tuple[torch.Tensor, ...]]:
    """``fn`` as a function of ``inputs[i] for i in wrt`` (the rest fixed), returning only its
    differentiable outputs."""

    def part(*xs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        full = list(inputs)
        for i, x in zip(wrt, xs):
            full[i] = x
        return tuple(o for o in fn(*full) if _differentiable(o))

    return part


class _Remat(torch.autograd.Function):
    """Saves only the inputs of ``fn``; the backward runs ``fn`` again under `torch.func.vjp`.

    ``fn`` takes and returns flat tuples of tensors. The backward is itself differentiable by
    any outer transform (MAML's outer ``grad``), and ``jvp`` makes forward mode (``jacfwd``,
    ``hessian``) work too.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(fn: Callable[..., tuple[torch.Tensor, ...]], *tensors: torch.Tensor) -> Any:
        return fn(*tensors)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: Any) -> None:
        ctx.fn = inputs[0]
        ctx.save_for_backward(*inputs[1:])
        ctx.save_for_forward(*inputs[1:])
        ctx.differentiable = [_differentiable(o) for o in output]
        ctx.mark_non_differentiable(*(o for o in output if not _differentiable(o)))

    @staticmethod
    def backward(ctx: Any, *grads: torch.Tensor) -> tuple[Any, ...]:
        # The backward of torch.func.grad at level L records at level L too (create_graph):
        # computed from level L's tensors, the recomputed activations would stay alive until
        # the whole gradient is done. Taken from level L-1, they are freed as the backward
        # goes, and outer levels (a MAML outer grad) still record them.
        saved = _compat.outside_innermost_grad(ctx.saved_tensors)
        grads = _compat.outside_innermost_grad(grads)
        wrt = [i for i, t in enumerate(saved) if _differentiable(t) and ctx.needs_input_grad[i + 1]]
        _, vjp = torch.func.vjp(_restricted(ctx.fn, saved, wrt), *(saved[i] for i in wrt))
        cotangents = vjp(tuple(g for g, d in zip(grads, ctx.differentiable) if d))
        out: list[Any] = [None] * (len(saved) + 1)
        for i, g in zip(wrt, cotangents):
            out[i + 1] = g
        return tuple(out)

    @staticmethod
    def jvp(ctx: Any, _fn_tangent: Any, *tangents: Any) -> Any:
        saved = ctx.saved_tensors
        wrt = [i for i, (t, dt) in enumerate(zip(saved, tangents))
               if _differentiable(t) and dt is not None]
        _, out = torch.func.jvp(_restricted(ctx.fn, saved, wrt), tuple(saved[i] for i in wrt),
                                tuple(tangents[i] for i in wrt))
        it = iter(out)
        return tuple(next(it) if d else None for d in ctx.differentiable)


class _Fn:
    """The function a `remat` wrapper runs, as a constant that Dynamo passes into the
    non-strictly traced call; two are equal when they wrap the same function object."""

    def __init__(self, fn: Callable[..., Any]) -> None:
        self.fn = fn

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Fn) and other.fn is self.fn

    def __hash__(self) -> int:
        return id(self.fn)


def _apply(wrapped: _Fn, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """``wrapped.fn(*args, **kwargs)`` with its inner activations recomputed in the backward."""
    leaves, spec = optree.tree_flatten((args, kwargs), none_is_leaf=True, namespace=NAMESPACE)
    where = [i for i, x in enumerate(leaves) if isinstance(x, torch.Tensor)]
    out_spec: list[optree.PyTreeSpec] = []

    def flat_fn(*tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        full = list(leaves)
        for i, t in zip(where, tensors):
            full[i] = t
        a, k = optree.tree_unflatten(spec, full)
        out = wrapped.fn(*a, **k)
        paths, outs, ospec = optree.tree_flatten_with_path(out, none_is_leaf=True,
                                                           namespace=NAMESPACE)
        for path, o in zip(paths, outs):
            if not isinstance(o, torch.Tensor):
                where_ = "".join(f"[{p!r}]" for p in path)
                raise TypeError(
                    f"remat: every output of {_name(wrapped.fn)} must be a tensor, got "
                    f"{describe(o)} at output{where_}. HINT: return Python values from outside "
                    "the rematerialised function.")
        if not out_spec:
            out_spec.append(ospec)
        return tuple(outs)

    outs = _Remat.apply(flat_fn, *(leaves[i] for i in where))
    return optree.tree_unflatten(out_spec[0], list(outs))


def traced_in(gm: torch.fx.GraphModule) -> bool:
    """Whether Dynamo's graph ``gm`` calls a `remat` wrapper (read from its nodes' stack traces).

    Example:
        >>> gm = torch.fx.symbolic_trace(lambda x: x + 1)
        >>> traced_in(gm)
        False
    """
    return any(__file__ in (node.stack_trace or "") for node in gm.graph.nodes)


def _name(fn: Any) -> str:
    return getattr(fn, "__qualname__", None) or type(fn).__name__


_IN_GRAPH: list[Callable[..., Any]] = []  # [`_apply` marked for Dynamo], made at first use


def _in_graph_apply() -> Callable[..., Any]:
    """`_apply` as a call Dynamo leaves opaque (AOTAutograd traces it), made once, at first use."""
    if not _IN_GRAPH:
        _compat.register_pytree_constant(_Fn)
        _IN_GRAPH.append(torch.compiler.nonstrict_trace(_apply))
    return _IN_GRAPH[0]


def _captured_tensor(fn: Any) -> str | None:
    """Where ``fn`` holds a tensor outside its arguments (a closure cell, a default or a
    ``functools.partial`` argument), or None. Looks inside pytrees (dicts, a
    `TrainState`), not inside other objects (a module's own parameters are not read by `call`)."""
    found: list[tuple[str, Any]] = []
    if isinstance(fn, functools.partial):
        found += [(f"functools.partial argument {i}", a) for i, a in enumerate(fn.args)]
        found += [(f"functools.partial keyword {k!r}", a) for k, a in fn.keywords.items()]
        fn = fn.func
    code = getattr(fn, "__code__", None)
    for name, cell in zip(getattr(code, "co_freevars", ()), getattr(fn, "__closure__", None) or ()):
        try:
            found.append((f"the closure variable {name!r}", cell.cell_contents))
        except ValueError:  # an empty cell
            pass
    defaults = getattr(fn, "__defaults__", None) or ()
    found += [(f"default argument {i}", d) for i, d in enumerate(defaults)]
    for where, value in found:
        if any(isinstance(leaf, torch.Tensor)
               for leaf in optree.tree_leaves(value, namespace=NAMESPACE)):
            return where
    return None


def remat(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Rematerialise ``fn``: keep only its inputs for the backward pass and recompute the rest.

    The counterpart of ``jax.checkpoint`` (gradient checkpointing) for a pure functrain step.
    ``remat(fn)`` computes the same values and gradients as ``fn``; under `torch.func.grad`
    (or ``vjp``, ``vmap`` of ``grad``, and ``grad`` of ``grad`` for MAML) it saves the
    tensors passed to ``fn`` instead of the activations inside it, and runs ``fn`` a second time
    when the backward pass reaches it. Wrap each block of a deep model to trade one extra
    forward pass per block for activation memory that no longer grows with the block's depth.

    Works eagerly and inside a compiled step (`fit`, `compile_step`; ``fullgraph=True``, one
    graph): Dynamo leaves the call opaque (``torch.compiler.nonstrict_trace``) and AOTAutograd
    traces it, so the recomputation sits in the backward part of the step's graph. The runner
    turns off Inductor's ``reorder_for_locality`` pass for such graphs (it moves part of the
    recomputation back next to the forward); when you compile a step yourself, pass
    ``torch.compile(step, options={"reorder_for_locality": False})``.

    Rules for ``fn``, as for ``jax.checkpoint``:

    - Every tensor it reads must be an argument (params, buffers, the block's input, a
      `functrain.random` key). A tensor held in a closure would be baked into the compiled
      graph as a constant; `remat` refuses the closures, defaults and ``functools.partial``
      arguments it can see. Modules may be closed over when run through `call` with params
      passed in.
    - Arguments are tensors, Python scalars, and dicts/lists/tuples of them; outputs are
      tensors or dicts/lists/tuples of tensors.
    - Randomness must come from a key argument (``ft.call(..., rng=key)`` or
      ``with ft.random.keyed(key):`` inside ``fn``) so that the recomputation draws the same
      values; the global generator would draw new ones.
    - Wrap once, outside the step (``block = ft.remat(block_fn)``): a compiled step can only
      take a wrapper made before it was compiled.

    Args:
        fn: the function to rematerialise.

    Returns:
        A function with ``fn``'s signature and results.

    Raises:
        TypeError: ``fn`` is not callable, holds a tensor outside its arguments, or (when
            called) returns something other than tensors.
        RuntimeError: ``remat`` itself is called while a step is being compiled.

    Example:
        >>> import torch, functrain as ft
        >>> def block(p, h):
        ...     return h + torch.tanh(h @ p["w1"]) @ p["w2"]
        >>> block_remat = ft.remat(block)
        >>> p = {"w1": torch.randn(4, 16), "w2": torch.randn(16, 4)}
        >>> x = torch.randn(2, 4)
        >>> g = torch.func.grad(lambda p: block_remat(p, x).square().sum())(p)
        >>> g_ref = torch.func.grad(lambda p: block(p, x).square().sum())(p)
        >>> all(torch.allclose(g[k], g_ref[k]) for k in p)
        True
    """
    if torch.compiler.is_compiling():
        raise RuntimeError(
            "remat(fn) was called while a step was being compiled. HINT: wrap the function "
            "once, outside the step (block = ft.remat(block_fn)), and call the wrapper inside.")
    if not callable(fn):
        raise TypeError(f"remat: expected a callable fn, got {describe(fn)}.")
    captured = _captured_tensor(fn)
    if captured is not None:
        raise TypeError(
            f"remat: {_name(fn)} holds a tensor in {captured}; a rematerialised function must "
            "take every tensor it reads as an argument (in a compiled step a captured tensor "
            "would be a constant of the graph and get no gradient). HINT: pass it as an "
            "argument: ft.remat(lambda p, x: ...)(params, x).")
    wrapped = _Fn(fn)
    apply = _in_graph_apply()

    @functools.wraps(fn)
    def rematerialised(*args: Any, **kwargs: Any) -> Any:
        return apply(wrapped, args, kwargs)

    return rematerialised
