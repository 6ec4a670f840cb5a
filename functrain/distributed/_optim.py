"""`data_parallel`: an optimizer that averages the gradients across ranks before it updates."""

from __future__ import annotations

from typing import Any

from ._collectives import pmean

__all__ = ["data_parallel"]


def data_parallel(tx: Any, *, group: Any = None) -> Any:
    """Wrap an optimizer so that ``update`` first averages the gradients over the ranks.

    ``state.apply_gradients(grads)`` then all-reduces ``grads`` (with `pmean`, inside the
    compiled step) and every rank applies the same update. The optimizer state is the wrapped
    optimizer's own, unchanged in structure, so a checkpoint of it restores on any number of
    ranks. `functrain.fit` wraps the state's optimizer this way when it runs on several ranks
    (and hands back the original at the end); write the step with plain gradients, without a
    `pmean` of your own (it would be harmless, but a second all-reduce).

    Args:
        tx: a `functrain.optim.GradientTransformation`.
        group: the process group to average over; default: the whole world.

    Returns:
        A `functrain.optim.GradientTransformation` with ``tx``'s ``init`` and state.

    Example:
        >>> import torch, functrain as ft
        >>> tx = ft.distributed.data_parallel(ft.optim.sgd(0.5))
        >>> params = {"w": torch.ones(2)}
        >>> updates, _ = tx.update({"w": torch.ones(2)}, tx.init(params), params)
        >>> updates["w"]   # one process: the inner optimizer's update
        tensor([-0.5000, -0.5000])
    """
    from ..optim import GradientTransformation

    if not (callable(getattr(tx, "init", None)) and callable(getattr(tx, "update", None))):
        raise TypeError(f"tx: expected a functrain.optim.GradientTransformation (init, update), "
                        f"got {type(tx).__name__}.")

    def update(updates: Any, state: Any, params: Any = None) -> tuple[Any, Any]:
        return tx.update(pmean(updates, group=group), state, params)

    return GradientTransformation(tx.init, update)
