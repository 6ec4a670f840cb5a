"""How a `fit` run continues from a checkpoint: finding and restoring it (state and
`LoopState`), setting newer checkpoints aside, and replaying the data of the epoch it stopped
in (the loader's order, a stateful loader's state, the global random generators)."""

from __future__ import annotations

import itertools
import warnings
from collections.abc import Iterable, Iterator
from typing import Any

from . import _rng_state
from ._loader_state import LoaderOrder
from ._loop_state import LoopState
from ._placement import prefetch

__all__ = ["EpochBatches", "resume_from", "warn_if_inexact"]


def resume_from(manager: Any, resume: Any, state: Any, policy: Any,
                dp: Any) -> tuple[Any, LoopState | None]:
    """The state and loop position of the checkpoint ``resume`` names (``"auto"``: the newest
    intact one of ``manager``), or ``(state, None)`` for a fresh run (moving an earlier run's
    checkpoints aside). ``policy`` is the training precision policy, ``dp`` the data-parallel
    run or ``None``."""
    if not resume:
        if manager is not None and manager.all() and (dp is None or dp.is_main):
            aside = manager.set_aside(-1, "a new run started here with resume=None")
            warnings.warn(f"fit: {str(manager.directory)!r} held checkpoints of an earlier "
                          "run; this run starts afresh (resume=None), so they were moved, "
                          f"untouched, to {str(aside)!r}. HINT: resume='auto' continues a "
                          "run.", stacklevel=5)
        return state, None
    from . import checkpoint

    # Every checkpoint corrupt: refuse (listing them) rather than start afresh over them.
    path = manager.latest(strict=True) if resume == "auto" else resume
    if dp is not None:  # every rank resumes from the checkpoint rank 0 found
        path = dp.broadcast_object(None if path is None else str(path))
    if path is None:
        return state, None
    position = LoopState.from_meta(checkpoint.load_meta(path))
    # A run under "16-mixed" saved a loss scale in extras: prepare `like` the same way.
    state = checkpoint.restore(path, like=policy.prepare_state(state))
    if manager is not None and hasattr(state, "step"):
        # This run continues the checkpoint it resumed from: newer ones (a branch abandoned
        # by a rollback, or corrupt ones skipped above) must not count as its newest, nor
        # be overwritten or evicted by its saves.
        aside = manager.set_aside(int(state.step), f"the run resumed from {str(path)!r}; "
                                  "these are newer, from another branch or corrupt")
        if aside is not None:
            warnings.warn(f"fit: resumed from {str(path)!r}; the newer checkpoints there "
                          f"were moved, untouched, to {str(aside)!r}, so that "
                          "resume='auto' finds this run's own newest.", stacklevel=5)
    return state, position


class EpochBatches:
    """An epoch's batches, in the order the uninterrupted run would have seen them: the
    loader's per-epoch order (`LoaderOrder`), and at a resume the stateful loader's state, the
    batches already trained on skipped and the global random generators restored."""

    def __init__(self, loader: Iterable[Any], order: LoaderOrder, runner: Any,
                 position: LoopState) -> None:
        self.loader, self.order, self.runner = loader, order, runner
        self.rng, self.loader_state = position.rng, position.loader

    def __call__(self, epoch: int, skip: int) -> Iterator[Any]:
        """The batches of ``epoch``, prefetched to an accelerator, the first ``skip`` skipped."""
        order, runner = self.order, self.runner
        order.start_epoch(epoch)
        if self.rng is not None and not skip:
            # at an epoch boundary: as the uninterrupted run was before iter(loader)
            _restore_rng(self.rng)
            self.rng = None
        if self.loader_state is not None:  # a stateful loader continues by itself
            order.load_state_dict(self.loader_state)
            self.loader_state = None
        # A stateful loader's state must not run ahead of the step: no prefetch.
        batches = iter(prefetch(self.loader, runner.place_batch)
                       if runner.device.type in ("cuda", "xla") and order.kind != "stateful"
                       else self.loader)
        if skip and order.skips_batches:  # resuming mid-epoch: the batches already trained on
            next(itertools.islice(batches, skip - 1, None), None)
        if self.rng is not None:  # mid-epoch: as the uninterrupted run was at the save
            _restore_rng(self.rng)
            self.rng = None
        return batches


def warn_if_inexact(order: LoaderOrder, skip: int, rng: Any) -> None:
    """At every resume, say so when it may not repeat the uninterrupted run exactly."""
    problems = []
    why = order.why_not_mid_epoch if skip else order.why_not
    if why is not None:
        problems.append(why)
    if rng is None:
        problems.append("the checkpoint holds no global random state (written by an older "
                        "functrain), so unkeyed randomness (nn.Dropout without a key, "
                        "torch.rand) draws other numbers")
    if problems:
        where = f"mid-epoch (after {skip} batches)" if skip else "at an epoch boundary"
        warnings.warn(f"resume {where}: not guaranteed to be exact: " + "; ".join(problems)
                      + ".", stacklevel=5)


def _restore_rng(state: Any) -> None:
    missing = _rng_state.restore(state)
    if missing:
        warnings.warn("resume: not guaranteed to be exact: could not restore "
                      + ", ".join(missing) + ".", stacklevel=3)

