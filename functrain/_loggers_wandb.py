"""`WandbLogger`: a run's metrics and hyperparameters in Weights & Biases (optional ``wandb``)."""

from __future__ import annotations

import numbers
import os
from typing import Any

from ._errors import check_choice, describe

__all__ = ["WandbLogger"]

_HINT = "HINT: pip install wandb"


def _number(key: str, v: Any) -> float | int:
    if isinstance(v, numbers.Real):
        return v if isinstance(v, int) and not isinstance(v, bool) else float(v)
    if getattr(v, "ndim", None) == 0 and hasattr(v, "item"):
        return v.item()  # a 0-d tensor passed by hand: one host sync
    raise TypeError(f"metrics[{key!r}]: expected a float or int, got {describe(v)}.")


class WandbLogger:
    """Log to Weights & Biases: each fit run is one W&B run.

    An adapter on the `functrain.loggers.Logger` protocol: pass it in ``fit(...,
    loggers=[...])``. ``wandb`` is imported when the logger is created, never by functrain's
    import. ``mode="offline"`` writes the run under ``dir`` without contacting a server
    (``wandb sync`` uploads it later), as does ``WANDB_MODE=offline`` in the environment.

    Hyperparameters go to ``run.config``; metrics to ``run.log(metrics, step=step)``, so W&B's
    step axis is the training step. W&B drops rows logged at a step lower than one already
    logged (it warns), which can happen when a resumed run replays steps into the same W&B run.
    `close` finishes the run.

    Args:
        project: the W&B project (``None``: W&B's default, e.g. ``WANDB_PROJECT``).
        name: the run's display name.
        dir: where W&B writes its files (a ``wandb/`` folder is made there); default: W&B's
            (``WANDB_DIR`` or the working directory).
        mode: ``"online"``, ``"offline"`` or ``"disabled"``; ``None``: W&B's default
            (``WANDB_MODE``, else online).
        **init_kwargs: more arguments of ``wandb.init`` (``entity``, ``tags``, ``group``,
            ``id`` and ``resume`` to continue a run, ``settings``...).

    Attributes:
        run: the ``wandb`` run object (for ``run.log`` of images, tables...).

    Raises:
        ImportError: wandb is not installed (with a hint).

    Example:
        >>> import tempfile
        >>> lg = WandbLogger("demo", dir=tempfile.mkdtemp(), mode="offline")  # doctest: +SKIP
        >>> lg.log_hparams({"lr": 1e-3})  # doctest: +SKIP
        >>> lg.log_metrics({"train/loss": 0.5}, step=10)  # doctest: +SKIP
        >>> lg.close()  # doctest: +SKIP
    """

    def __init__(self, project: str | None = None, *, name: str | None = None,
                 dir: str | os.PathLike[str] | None = None, mode: str | None = None,
                 **init_kwargs: Any) -> None:
        if project is not None and not isinstance(project, str):
            raise TypeError(f"project: expected a str or None, got {describe(project)}.")
        if mode is not None:
            check_choice("mode", mode, ("online", "offline", "disabled"))
        try:
            import wandb
        except ImportError as e:
            raise ImportError(f"WandbLogger needs the wandb package, which is not installed "
                              f"({e}). {_HINT}") from e
        if dir is not None:
            os.makedirs(dir, exist_ok=True)
        init_kwargs.setdefault("reinit", "create_new")  # one W&B run per fit, even in a loop
        self.run = wandb.init(project=project, name=name,
                              dir=None if dir is None else os.fspath(dir), mode=mode,
                              **init_kwargs)
        self._closed = False

    def log_hparams(self, params: dict[str, Any]) -> None:
        """Record ``params`` in ``run.config`` (later values replace earlier ones)."""
        self.run.config.update(dict(params), allow_val_change=True)

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        """``run.log(metrics, step=step)``.

        Raises:
            TypeError: a value is not a number (names its key).
        """
        self.run.log({k: _number(k, v) for k, v in metrics.items()}, step=int(step))

    def close(self) -> None:
        """Finish the run (safe to call twice)."""
        if not self._closed:
            self._closed = True
            self.run.finish()
