"""`export_full_params`: a (sharded) checkpoint's full weights, for inference, in one call."""

from __future__ import annotations

import os
from pathlib import Path

import torch

__all__ = ["export_full_params"]


def export_full_params(checkpoint: str | os.PathLike[str],
                       out: str | os.PathLike[str] | None = None) -> dict[str, torch.Tensor]:
    """The full parameters and buffers of a checkpoint, ready for ``load_state_dict``.

    Reads only ``state.params`` and ``state.buffers`` (never the optimizer state), and DCP
    joins the shards that the ranks of a sharded run (`shard_state`) wrote into whole tensors,
    whatever number of ranks wrote them. Runs in one process, no process group needed. Every
    file is checked against the manifest first, as `functrain.checkpoint.restore` does.

    Args:
        checkpoint: a checkpoint directory (`functrain.checkpoint.save`, or one of
            ``fit``'s under ``run_dir/checkpoints``).
        out: also write them to this safetensors file (as
            `functrain.checkpoint.export_weights` writes; needs the ``safetensors`` package).

    Returns:
        ``{name: tensor}`` on the CPU: ``model.load_state_dict(export_full_params(path))``.

    Raises:
        functrain.checkpoint.CheckpointError: the checkpoint is incomplete, corrupt, or has no
            params.

    Example:
        >>> import tempfile, torch, functrain as ft
        >>> model = torch.nn.Linear(3, 2)
        >>> state = ft.TrainState.create(model, ft.optim.adamw(1e-3))
        >>> with tempfile.TemporaryDirectory() as d:
        ...     _ = ft.checkpoint.save(f"{d}/c", state)
        ...     weights = ft.distributed.export_full_params(f"{d}/c")
        >>> model.load_state_dict(weights)
        <All keys matched successfully>
    """
    from ..checkpoint import CheckpointError
    from ..checkpoint._export import _write_safetensors
    from ..checkpoint._inference import read_weights

    saved = read_weights(Path(checkpoint))
    if not saved["params"]:
        raise CheckpointError(f"checkpoint {str(checkpoint)!r}: expected a state with params (a "
                              "TrainState), got none among its leaves.")
    weights = {**saved["params"], **saved["buffers"]}
    if out is not None:
        _write_safetensors(out, weights)
    return weights
