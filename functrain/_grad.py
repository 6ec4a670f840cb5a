"""`grad_and_value`: ``torch.func.grad_and_value`` that runs on plain autograd when it can.

``torch.func.grad`` wraps every tensor of the differentiated function in a grad-tracking
wrapper and runs autograd one level up, so each operator dispatched inside it costs more on the
host (on the MNIST-1D CNN of the README's main job, forward + backward ran 1.37x the plain
``loss.backward()`` time on one CPU thread, with identical kernels and arguments underneath;
``torch.autograd.grad`` over the same function ran 1.06x). Compiled, the wrapper costs nothing:
the graph is traced once. So `grad_and_value` differentiates with ``torch.autograd.grad``
over detached copies of the inputs in eager mode, and is exactly ``torch.func.grad_and_value``
wherever that matters: while compiling, inside another ``torch.func`` transform (``vmap``
populations, per-example gradients, MAML's grad of grad), and when an input already requires
grad (an outer autograd graph to keep).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import optree
import torch

from . import tree as _tree
from ._compat import functorch_transform_active
from ._errors import describe

__all__ = ["grad_and_value"]


def grad_and_value(func: Callable[..., Any], argnums: int | tuple[int, ...] = 0,
                   has_aux: bool = False) -> Callable[..., Any]:
    """``torch.func.grad_and_value`` with a faster eager path: gradients and the value of ``func``.

    Same signature and results as ``torch.func.grad_and_value``: the returned function gives
    ``(grads, value)``, or ``(grads, (value, aux))`` with ``has_aux=True``; ``grads`` has the
    structure of the argument(s) picked by ``argnums`` (a tuple of such trees for a tuple of
    ``argnums``), with zeros for inputs the value does not depend on; ``value`` and ``aux``
    come back detached.

    How it differentiates:

    * while ``torch.compile`` traces it, or inside another ``torch.func`` transform (``vmap``,
      ``grad``, ``vjp``, ``jvp``), or when a differentiated input already requires grad: it
      *is* ``torch.func.grad_and_value`` (the same compiled graph; populations, per-example
      gradients and higher-order gradients work as with ``torch.func``);
    * otherwise (a step run eagerly): ``torch.autograd.grad`` over detached copies of the
      inputs that require grad. Same gradients, without ``torch.func``'s per-operator wrapper
      cost (about a quarter of the forward + backward time of a small CNN on the CPU).

    The one difference, in the eager path: the grads, value and aux come back detached from any
    outer autograd graph. A tensor ``func`` closes over (or gets through an argument not in
    ``argnums``) that requires grad is a constant here, where ``torch.func`` keeps the
    results differentiable towards it for a later ``backward()``. To differentiate through
    the results, pass that tensor in an ``argnums`` argument (the call then defers to
    ``torch.func``) or call ``torch.func.grad_and_value``.

    Args:
        func: the function to differentiate; returns a scalar tensor (or ``(scalar, aux)`` with
            ``has_aux=True``).
        argnums: which positional argument(s) to differentiate: an int or a tuple of ints.
        has_aux: ``func`` returns ``(value, aux)``; ``aux`` is returned untouched but detached.

    Returns:
        A function of ``func``'s arguments returning ``(grads, value)`` or
        ``(grads, (value, aux))``.

    Raises:
        TypeError: if ``func`` is not callable, ``argnums`` is not an int or a tuple of ints,
            or ``has_aux`` is not a bool (at once); when called, if ``func`` returns something
            other than a scalar tensor (or a pair with ``has_aux``), or an ``aux`` leaf that is
            not a tensor (named by its path). An ``argnums`` out of range or repeated, or a
            differentiated leaf that is not a floating tensor, gets ``torch.func``'s own error.

    Example:
        >>> import torch, functrain as ft
        >>> model = torch.nn.Linear(3, 1)
        >>> params, buffers = ft.split_module(model)
        >>> def loss_fn(params, x):
        ...     out, _ = ft.call(model, params, buffers, x)
        ...     return out.square().mean(), out
        >>> grads, (loss, out) = ft.grad_and_value(loss_fn, has_aux=True)(params, torch.ones(4, 3))
        >>> ref, _ = torch.func.grad_and_value(loss_fn, has_aux=True)(params, torch.ones(4, 3))
        >>> all(torch.allclose(grads[k], ref[k]) for k in params)
        True
    """
    if not callable(func):
        raise TypeError(f"func: expected a callable, got {describe(func)}.")
    if isinstance(argnums, tuple):
        if not argnums or not all(_is_int(a) for a in argnums):
            raise TypeError(f"argnums: expected an int or a non-empty tuple of ints, got "
                            f"{argnums!r}.")
    elif not _is_int(argnums):
        raise TypeError(f"argnums: expected an int or a non-empty tuple of ints, got "
                        f"{describe(argnums)}.")
    if not isinstance(has_aux, bool):
        raise TypeError(f"has_aux: expected a bool, got {describe(has_aux)}.")

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if not torch.compiler.is_compiling() and not functorch_transform_active():
            picked = _pick(args, argnums)
            if picked is not None:
                return _autograd(func, argnums, has_aux, args, kwargs, picked)
        return torch.func.grad_and_value(func, argnums, has_aux)(*args, **kwargs)

    return wrapper


def _detach_aux(path: str, x: Any) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):  # as torch.func, which unwraps every aux leaf
        raise TypeError(f"grad_and_value(func, has_aux=True): {path}: expected a tensor, got "
                        f"{describe(x)}. HINT: return only tensors (in dicts, lists, tuples) "
                        "as aux, as torch.func.grad_and_value requires.")
    return x.detach()


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _pick(args: tuple[Any, ...], argnums: int | tuple[int, ...]) -> Any:
    """The flattened differentiated arguments and their spec, or None where the eager path does
    not apply (an argnum out of range or repeated, a leaf that is not a floating tensor, a leaf
    that already requires grad): then ``torch.func`` runs, and raises its own errors."""
    n = len(args)
    if isinstance(argnums, tuple):
        if not all(0 <= a < n for a in argnums) or len(set(argnums)) != len(argnums):
            return None
        picked: Any = tuple(args[a] for a in argnums)
    elif 0 <= argnums < n:
        picked = args[argnums]
    else:
        return None
    if type(picked) is dict:  # the common case, a flat params dict: its keys are the spec
        spec: Any = tuple(picked)
        leaves = list(picked.values())
        for x in leaves:
            if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.requires_grad:
                break
        else:
            return leaves, spec
    # optree's built-in containers (dict, list, tuple, namedtuple...) flatten as torch.func's
    # pytree does; anything else is a leaf here, not a tensor, and goes to torch.func.
    # (The leaf test is written out in both loops, not called: this runs every eager step.)
    leaves, spec = optree.tree_flatten(picked)
    for x in leaves:
        if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.requires_grad:
            return None
    return leaves, spec


def _unflatten(spec: Any, values: list[Any]) -> Any:
    return dict(zip(spec, values)) if type(spec) is tuple else optree.tree_unflatten(spec, values)


def _autograd(func: Callable[..., Any], argnums: int | tuple[int, ...], has_aux: bool,
              args: tuple[Any, ...], kwargs: dict[str, Any], picked: Any) -> Any:
    leaves, spec = picked
    inputs = [x.detach().requires_grad_() for x in leaves]
    tracked = _unflatten(spec, inputs)
    new_args = list(args)
    if isinstance(argnums, tuple):
        for a, t in zip(argnums, tracked):
            new_args[a] = t
    else:
        new_args[argnums] = tracked
    with torch.enable_grad():
        out = func(*new_args, **kwargs)
        if has_aux:
            if not (isinstance(out, tuple) and len(out) == 2):
                raise TypeError(
                    "grad_and_value(func, has_aux=True): expected func to return a tuple "
                    f"(value, aux), got {describe(out)}.")
            value, aux = out
        else:
            value, aux = out, None
        if not isinstance(value, torch.Tensor) or value.dim() != 0:
            raise TypeError(
                "grad_and_value(func): expected func to return a scalar (0-d) tensor"
                f"{' as the first of (value, aux)' if has_aux else ''}, got "
                f"{describe(value)}. HINT: reduce it, e.g. loss.mean().")
        if value.requires_grad:
            grads = list(torch.autograd.grad(value, inputs, allow_unused=True))
        else:  # the value does not depend on the inputs
            grads = [None] * len(inputs)
    for i, g in enumerate(grads):
        if g is None:  # an input the value does not depend on: zeros, as torch.func gives
            grads[i] = torch.zeros_like(leaves[i])
    if has_aux:
        aux = aux.detach() if isinstance(aux, torch.Tensor) else _tree.map_with_path(
            _detach_aux, aux, name="aux")
    grads_tree = _unflatten(spec, grads)
    return (grads_tree, (value.detach(), aux)) if has_aux else (grads_tree, value.detach())

