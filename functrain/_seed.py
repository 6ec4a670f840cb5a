"""`seed_everything`: one call that makes a run a function of its seed, model init included."""

from __future__ import annotations

import random

import torch

from ._errors import check_int

__all__ = ["seed_everything"]

_MAX_SEED = 2**32 - 1  # numpy's legacy seeding takes at most 32 bits


def seed_everything(seed: int) -> int:
    """Seed every global generator a training script draws from, and return ``seed``.

    Seeds Python's ``random``, NumPy's global generator (when NumPy is installed) and
    PyTorch's CPU and CUDA generators (``torch.manual_seed``). Call it first, before building
    the model: ``nn.Module`` constructors draw their initial weights from PyTorch's global
    generator, which ``TrainState.create(..., seed=)`` does not touch (its ``seed`` makes the
    state's `functrain.random` key, from which keyed dropout draws). With both, a run is a
    function of its seed: the initial weights, the dropout masks, the data order of a
    `functrain.data.ArrayLoader` (its own ``seed``) and a ``DataLoader``'s shuffling and worker
    seeds (drawn from PyTorch's generator).

    What it does not do: make kernels deterministic (``torch.use_deterministic_algorithms``,
    a process-wide switch with a cost, is yours to set), or seed generators a library keeps
    for itself.

    Args:
        seed: an int in ``[0, 2**32 - 1]``.

    Returns:
        ``seed``, e.g. to pass on to ``TrainState.create(..., seed=...)``.

    Raises:
        TypeError / ValueError: ``seed`` is not an int in range.

    Example:
        >>> import torch
        >>> seed = seed_everything(0)
        >>> a = torch.nn.Linear(3, 2).weight
        >>> _ = seed_everything(0)
        >>> torch.equal(a, torch.nn.Linear(3, 2).weight)
        True
    """
    check_int("seed", seed, minimum=0)
    if seed > _MAX_SEED:
        raise ValueError(f"seed: expected an int in [0, {_MAX_SEED}], got {seed}. HINT: NumPy "
                         "seeds take at most 32 bits; use seed % 2**32.")
    random.seed(seed)
    try:
        import numpy
    except ImportError:
        pass
    else:
        numpy.random.seed(seed)
    torch.manual_seed(seed)  # every device's default generator, CUDA's included
    return seed
