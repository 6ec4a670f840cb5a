"""`data_parallel`: an optimizer that averages the gradients across ranks before it updates."""

from __future__ import annotations

from typing import Any

import torch

from ..optim import GradientTransformation
from ._collectives import pmean, psum

__all__ = ["data_parallel"]


class _DataParallel(GradientTransformation):
    """What `data_parallel` returns: ``(init, update)`` plus `agree_finite` for fp16 steps.

    A `GradientTransformation` (a NamedTuple of ``init`` and ``update``) that also carries its
    process group, so that `functrain.precision.apply_gradients` can make every rank skip the
    same non-finite steps.
    """

    def __new__(cls, init: Any, update: Any, group: Any = None) -> _DataParallel:
        self = super().__new__(cls, init, update)
        self.group = group
        return self

    def __getnewargs__(self) -> tuple[Any, ...]:
        return (self.init, self.update, self.group)

    def agree_finite(self, finite: torch.Tensor) -> torch.Tensor:
        """``finite`` on every rank: True only where it is True on all ranks (one all-reduce).

        The gradients are averaged in ``update``, so one rank's inf reaches every rank's
        update; a loss-scaled step (``precision="16-mixed"``) must then be skipped, and the
        loss scale backed off, on every rank alike. The non-finite indicator is summed over
        the ranks with a functional collective, so it stays inside the compiled step.
        """
        bad = psum((~finite.to(torch.bool)).to(torch.int32), group=self.group)
        return bad == 0


def data_parallel(tx: Any, *, group: Any = None) -> Any:
    """Wrap an optimizer so that ``update`` first averages the gradients over the ranks.

    ``state.apply_gradients(grads)`` then all-reduces ``grads`` (with `pmean`, inside the
    compiled step) and every rank applies the same update. The optimizer state is the wrapped
    optimizer's own, unchanged in structure, so a checkpoint of it restores on any number of
    ranks. `functrain.fit` wraps the state's optimizer this way when it runs on several ranks
    (and hands back the original at the end); write the step with plain gradients, without a
    `pmean` of your own (it would be harmless, but a second all-reduce).

    With ``precision="16-mixed"``, `functrain.precision.apply_gradients` asks the wrapped
    optimizer whether the gradients were finite on *every* rank (one more all-reduce, of a
    flag, in the same graph): one rank's overflow makes all ranks skip that step and back off
    the loss scale together, so params and loss scale stay identical across ranks.

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
    if not (callable(getattr(tx, "init", None)) and callable(getattr(tx, "update", None))):
        raise TypeError(f"tx: expected a functrain.optim.GradientTransformation (init, update), "
                        f"got {type(tx).__name__}.")

    def update(updates: Any, state: Any, params: Any = None, **extra: Any) -> tuple[Any, Any]:
        grads = pmean(updates, group=group)
        if extra:  # e.g. value=loss for reduce_on_plateau: only for an optimizer that takes it
            return tx.update(grads, state, params, **extra)
        return tx.update(grads, state, params)

    return _DataParallel(tx.init, update, group)
