"""`LoopState`: where a `fit` run is, as one small value saved in and restored from checkpoints."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import torch

__all__ = ["LoopState"]

_FORMAT = "functrain.LoopState/1"


@dataclasses.dataclass(frozen=True)
class LoopState:
    """The loop's position in a run: what a checkpoint needs, beyond the training state, for
    the resumed run to continue exactly where this one stopped.

    Attributes:
        epoch: the epoch in progress, from 0.
        batch_in_epoch: batches of that epoch already trained on.
        samples: examples trained on since the run began.
        run_start: ``state.step`` when the run began (``max_steps`` counts from there).
        window_steps: steps merged into the open metric window.
        window_samples: examples in those steps.
        window: the open metric window's tensors (`functrain.MetricWindow.tensors`).
        callbacks: every callback's ``state_dict()``, by ``state_key``.
        data_seed: the seed of the loader's per-epoch order (`functrain._loader_state`).
        rng: the global random generators' state at the save (`functrain._rng_state`).
        loader: a stateful loader's ``state_dict()`` at the save, else ``None``.

    Example:
        >>> pos = LoopState(epoch=2, batch_in_epoch=5, samples=420, run_start=0)
        >>> LoopState.from_meta(pos.to_meta()) == pos
        True
    """

    epoch: int = 0
    batch_in_epoch: int = 0
    samples: int = 0
    run_start: int = 0
    window_steps: int = 0
    window_samples: int = 0
    window: tuple[torch.Tensor, ...] = ()
    callbacks: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    data_seed: int | None = None
    rng: Mapping[str, Any] | None = None
    loader: Any = None

    def to_meta(self) -> dict[str, Any]:
        """A checkpoint's ``meta`` dict (`functrain.checkpoint.save`) holding this value."""
        return {"format": _FORMAT,
                **{f.name: getattr(self, f.name) for f in dataclasses.fields(self)},
                "window": list(self.window), "callbacks": dict(self.callbacks)}

    @classmethod
    def from_meta(cls, meta: Mapping[str, Any]) -> LoopState:
        """Read `to_meta`'s dict back (from `functrain.checkpoint.load_meta`).

        Raises:
            ValueError: the checkpoint was not written by `functrain.fit`'s loop (or by an
                older one, whose layout is not read).
        """
        if meta.get("format") != _FORMAT:
            raise ValueError(f"resume: expected a checkpoint written by functrain.fit "
                             f"(meta format {_FORMAT!r}), got meta format "
                             f"{meta.get('format')!r}. HINT: resume from a checkpoint saved "
                             "by fit(..., callbacks=[ft.Checkpointing(every=N)]).")
        names = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in meta.items() if k in names}
        values["window"] = tuple(values.get("window", ()))
        return cls(**values)
