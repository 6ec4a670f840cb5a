"""Gradient noise: `add_noise`, drawing from `functrain.random` keys carried in the state."""

from __future__ import annotations

from typing import NamedTuple

import torch

from functrain import _errors
from functrain import random as _random
from functrain import tree as _tree

from . import _checks
from ._base import GradientTransformation, Params, Updates, device_of, zero_count


class AddNoiseState(NamedTuple):
    """State of `add_noise`: step ``count`` and the ``rng_key`` (a `functrain.random` key).

    Example:
        >>> import torch
        >>> from functrain import optim
        >>> optim.add_noise(0.01, 0.55, key=0).init({"w": torch.zeros(1)}).count
        tensor(0)
    """

    count: torch.Tensor
    rng_key: torch.Tensor


def add_noise(eta: float, gamma: float, key: int | torch.Tensor = 0) -> GradientTransformation:
    """Add Gaussian noise of variance ``eta / t**gamma`` at step t (Neelakantan et al., 2015).

    Randomness follows optax's recipe with `functrain.random` (Threefry, as ``jax.random``):
    each step splits the state's key into (next key, sample key) and the sample key into one
    key per leaf (in tree order); each leaf's noise is ``functrain.random.normal`` of its key.
    Deterministic given ``key``, and the draws compile (no global generator). The bits are
    JAX's; the normals agree with ``jax.random.normal`` up to ``erfinv``'s rounding.

    Args:
        eta: the initial variance, >= 0.
        gamma: the decay power of the variance, >= 0.
        key: a `functrain.random` key (shape ``(2,)``) or an int seed.

    Returns:
        A `GradientTransformation` with `AddNoiseState`.

    Example:
        >>> import torch
        >>> from functrain import optim
        >>> opt = optim.add_noise(eta=1.0, gamma=0.0, key=0)
        >>> updates, _ = opt.update({"w": torch.zeros(10000)}, opt.init({"w": torch.zeros(1)}))
        >>> round(updates["w"].std().item(), 1)
        1.0
    """
    _checks.non_negative("eta", eta)
    _checks.non_negative("gamma", gamma)
    if not isinstance(key, torch.Tensor):
        _errors.check_int("key", key, hint="pass a functrain.random key or an int seed.")

    def init_fn(params: Params) -> AddNoiseState:
        device = device_of(params)
        k = key if isinstance(key, torch.Tensor) else _random.key(key, device=device)
        return AddNoiseState(count=zero_count(params), rng_key=k.to(device).clone())

    def update_fn(updates: Updates, state: AddNoiseState, params: Params | None = None):
        _checks.update_inputs(updates, params)
        count = state.count + 1
        keys = _random.split(state.rng_key)
        next_key, sample_key = keys[0], keys[1]
        leaves = _tree.leaves(updates)
        leaf_keys = _random.split(sample_key, max(len(leaves), 1))
        noise = iter([_random.normal(leaf_keys[i], tuple(x.shape), x.dtype)
                      for i, x in enumerate(leaves)])  # consumed by `one` in the same order
        std_cache: dict[torch.dtype, torch.Tensor] = {}

        def one(g):
            if g.dtype not in std_cache:
                c = count.to(torch.promote_types(g.dtype, torch.float32))
                std_cache[g.dtype] = torch.sqrt(eta / c**gamma)
            return (g + std_cache[g.dtype] * next(noise)).to(g.dtype)

        return _tree.map(one, updates), AddNoiseState(count=count, rng_key=next_key)

    return GradientTransformation(init_fn, update_fn)
