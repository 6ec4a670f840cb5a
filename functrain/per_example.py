"""Per-example gradients: ``torch.func.vmap`` over ``torch.func.grad``, one example at a time.

With a pure loss ``loss_fn(params, x, y)`` written for a batch, the gradient of each example's
loss is ``grad(loss_fn)(params, x[i:i+1], y[i:i+1])``; `per_example_grads` computes all of
them in one vectorized call (and one compiled graph inside a compiled step). This is what
DP-SGD (`functrain.privacy`) clips, and what influence functions, gradient-noise statistics
or per-example gradient norms need.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from ._errors import describe

__all__ = ["per_example_grads"]


def per_example_grads(
    loss_fn: Callable[..., Any],
    *,
    argnums: int = 0,
    has_aux: bool = False,
    keep_batch_dim: bool = True,
) -> Callable[..., tuple[Any, Any]]:
    """Make a function returning the gradient of every example's loss, and the losses.

    ``loss_fn(params, *batch)`` is the ordinary loss of a batch, returning a 0-d tensor (or
    ``(loss, aux)`` with ``has_aux``). The returned function takes the same arguments, every
    batch argument with a leading batch dimension B, and returns ``(grads, losses)``:
    ``grads`` has the structure of ``params`` with a leading dimension B on every leaf
    (``grads[k][i]`` is the gradient of example i's loss), ``losses`` has shape (B,).

    Each example is passed to ``loss_fn`` as a batch of one (``x[i:i+1]``), so the model code
    needs no change. Modules whose output for one example depends on the others (BatchNorm in
    training mode) have no per-example gradient: use GroupNorm/LayerNorm, as DP-SGD requires.

    Args:
        loss_fn: ``loss_fn(params, *batch) -> loss`` (or ``(loss, aux)``).
        argnums: which argument to differentiate (the params), as in ``torch.func.grad``.
        has_aux: ``loss_fn`` returns ``(loss, aux)``; then the result is
            ``(grads, (losses, aux))`` with aux stacked per example.
        keep_batch_dim: pass each example with a batch dimension of 1 (default); ``False``
            passes it without (``x[i]``), for a ``loss_fn`` written for one example.

    Returns:
        ``fn(*args) -> (grads, losses)`` (or ``(grads, (losses, aux))``).

    Raises:
        TypeError: if ``loss_fn`` is not callable or ``argnums`` is not an int.

    Example:
        >>> import torch, functrain as ft
        >>> def loss_fn(params, x, y):
        ...     return ((x @ params["w"] - y) ** 2).mean()
        >>> params = {"w": torch.zeros(3)}
        >>> x, y = torch.eye(3), torch.tensor([1.0, 2.0, 3.0])
        >>> grads, losses = ft.per_example_grads(loss_fn)(params, x, y)
        >>> grads["w"]          # example i only moves w[i]
        tensor([[-2.,  0.,  0.],
                [ 0., -4.,  0.],
                [ 0.,  0., -6.]])
        >>> torch.allclose(grads["w"].mean(0), torch.func.grad(loss_fn)(params, x, y)["w"])
        True
    """
    if not callable(loss_fn):
        raise TypeError(f"loss_fn: expected a callable loss_fn(params, *batch) -> loss, got "
                        f"{describe(loss_fn)}.")
    if isinstance(argnums, bool) or not isinstance(argnums, int):
        raise TypeError(f"argnums: expected an int (the position of params), got "
                        f"{describe(argnums)}. HINT: differentiate one argument; group several "
                        "in a dict.")

    def one(*args: Any) -> Any:
        if keep_batch_dim:
            args = tuple(a if i == argnums else _add_batch_dim(a) for i, a in enumerate(args))
        return loss_fn(*args)

    grad_fn = torch.func.grad_and_value(one, argnums=argnums, has_aux=has_aux)

    def fn(*args: Any) -> tuple[Any, Any]:
        if len(args) <= argnums:
            raise TypeError(f"per_example_grads: expected the params at position {argnums} "
                            f"and batch arguments, got {len(args)} argument(s).")
        in_dims = tuple(None if i == argnums else 0 for i in range(len(args)))
        return torch.func.vmap(grad_fn, in_dims=in_dims)(*args)

    return fn


def _add_batch_dim(x: Any) -> Any:
    if isinstance(x, torch.Tensor):
        return x.unsqueeze(0)
    if isinstance(x, (tuple, list)):
        return type(x)(_add_batch_dim(v) for v in x)
    if isinstance(x, dict):
        return {k: _add_batch_dim(v) for k, v in x.items()}
    return x
