"""`predict`: run a function over a loader and return its outputs concatenated (Lightning's
``trainer.predict``)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import optree
import torch

from . import tree as _tree
from ._errors import check_choice, describe

__all__ = ["predict"]

_COMPILE = ("eager", "auto", "inductor", True, False)


def predict(
    fn: Callable[[Any, Any], Any],
    state: Any,
    loader: Iterable[Any],
    *,
    device: str | torch.device = "auto",
    compile: str | bool = "eager",
    precision: Any = "32",
) -> Any:
    """Run ``fn(state, batch) -> outputs`` over ``loader``; return the outputs concatenated.

    ``outputs`` is a tensor or any pytree of tensors (a tuple, a dict) whose leaves have the
    batch as their first dimension; each leaf is concatenated along it over all batches (0-d
    leaves are stacked). ``fn`` runs without autograd (``torch.no_grad``) on ``device``: the
    state is placed there once, each batch as it comes, and each batch's outputs are copied
    to the CPU (one host transfer per batch), so the result never piles up in accelerator
    memory. ``state`` is not consumed (nothing is donated), and ``fn`` is plain Python by
    default: print, pdb and ``.item()`` work in it.

    Run the model in evaluation mode inside ``fn``: ``state.apply(x, train=False)`` (or
    ``functrain.call(..., train=False)``), so dropout is off and BatchNorm uses its running
    statistics.

    Args:
        fn: ``fn(state, batch) -> outputs``.
        state: what ``fn`` reads (usually a `functrain.TrainState`).
        loader: an iterable of batches.
        device: ``"auto"`` (CUDA if available, else CPU), ``"cpu"``, ``"cuda"``, ``"xla"``...
        compile: ``"eager"`` (default), or ``"auto"`` / ``"inductor"`` / ``True``:
            ``torch.compile(fullgraph=True)`` with inductor (a smaller last batch compiles once
            more). A ``functrain.eager(fn)``-marked ``fn`` runs eagerly whatever this says.
        precision: as in `functrain.fit` (``"32"``, ``"bf16-mixed"``, ``"bf16-true"``, ...):
            autocast and the batch and state casts of a `functrain.precision.Policy`;
            floating-point outputs come back in the policy's output dtype.

    Returns:
        The outputs of all batches, concatenated leaf by leaf, on the CPU.

    Raises:
        TypeError: ``fn`` is not callable, or returned something that is not a tensor or a
            pytree of tensors (names the leaf path), or a different structure for a later
            batch.
        ValueError: ``loader`` yielded no batches, or a leaf's shapes cannot be concatenated.

    Example:
        >>> import torch, functrain as ft
        >>> model = torch.nn.Linear(3, 2)
        >>> state = ft.TrainState.create(model, ft.optim.sgd(0.1))
        >>> loader = [torch.ones(4, 3), torch.ones(2, 3)]
        >>> logits = predict(lambda s, x: s.apply(x, train=False)[0], state, loader)
        >>> logits.shape
        torch.Size([6, 2])
        >>> out = predict(lambda s, x: {"label": s.apply(x)[0].argmax(1)}, state, loader)
        >>> out["label"].shape
        torch.Size([6])
    """
    from ._evaluate import eager

    if isinstance(fn, eager):  # ft.eager(fn): eagerly, whatever compile says
        fn, compile = fn.fn, "eager"
    if not callable(fn):
        raise TypeError(f"fn: expected a callable fn(state, batch) -> outputs, got "
                        f"{describe(fn)}.")
    if not isinstance(loader, Iterable):
        raise TypeError(f"loader: expected an iterable of batches, got {describe(loader)}.")
    check_choice("compile", compile, _COMPILE,
                 hint="predict runs eagerly by default; compile='auto' compiles with inductor.")
    from ._placement import resolve_device
    from .precision import Policy

    dev = resolve_device(device)
    policy = precision if isinstance(precision, Policy) else Policy.from_name(precision)
    state = _tree.map(lambda x: x.to(dev) if isinstance(x, torch.Tensor) else x,
                      policy.cast_state(state))
    run = policy.wrap_step(fn, dev.type, check_loss_scale=False)
    if compile not in ("eager", False):
        run = torch.compile(run, backend="inductor", fullgraph=True, dynamic=False)

    spec, names = None, []
    pieces: list[list[torch.Tensor]] = []
    with torch.no_grad():
        for i, batch in enumerate(loader):
            batch = _tree.map(
                lambda x: x.to(dev, non_blocking=True) if isinstance(x, torch.Tensor) else x,
                batch)
            out = policy.cast_to_output(run(state, batch))
            leaves, this_spec = optree.tree_flatten(out, namespace=_tree.NAMESPACE)
            if spec is None:
                names = _check_outputs(out)
                spec = this_spec
                pieces = [[] for _ in leaves]
            elif this_spec != spec:
                raise TypeError(f"fn(state, batch) for batch {i}: expected outputs of the "
                                f"structure of batch 0, {spec}, got {this_spec}. HINT: return "
                                "the same tuple/dict of tensors for every batch.")
            for acc, leaf in zip(pieces, leaves):
                if not isinstance(leaf, torch.Tensor):
                    raise TypeError(f"fn(state, batch) for batch {i}: expected tensors, got "
                                    f"{describe(leaf)}.")
                acc.append(leaf.detach().to("cpu"))
    if spec is None:
        raise ValueError("loader: expected at least one batch, got none.")
    return optree.tree_unflatten(spec, [_concat(name, acc) for name, acc in zip(names, pieces)])


def _check_outputs(out: Any) -> list[str]:
    """Check the first batch's outputs; return their leaf paths."""
    leaves = _tree.leaves_with_path(out, "outputs")
    if not leaves:
        raise TypeError(f"fn(state, batch): expected a tensor or a pytree of tensors, got "
                        f"{describe(out)} with no tensors. HINT: return the predictions, e.g. "
                        "state.apply(x, train=False)[0].")
    for path, leaf in leaves:
        if not isinstance(leaf, torch.Tensor):
            raise TypeError(f"{path}: expected a tensor, got {describe(leaf)}. HINT: predict "
                            "concatenates tensors; return numbers as tensors.")
    return [path for path, _ in leaves]


def _concat(name: str, acc: list[torch.Tensor]) -> torch.Tensor:
    if acc[0].dim() == 0:
        return torch.stack(acc)
    try:
        return torch.cat(acc)
    except RuntimeError:
        shapes = sorted({tuple(x.shape[1:]) for x in acc})
        raise ValueError(f"{name}: expected the same shape after the batch dimension in every "
                         f"batch, got {shapes}. HINT: pad to a common length inside fn, or "
                         "collect the batches yourself in a loop.") from None
