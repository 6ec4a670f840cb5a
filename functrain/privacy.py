"""DP-SGD: per-example clipping and Gaussian noise drawn from keys; accounting by opacus.

DP-SGD (Abadi et al. 2016) bounds each example's influence on an update: it clips every
per-example gradient to an L2 norm of at most ``l2_norm_clip`` (the norm over all parameters
together), sums them, adds Gaussian noise of standard deviation
``noise_multiplier * l2_norm_clip`` and divides by the batch size. The clipping rule is
opacus': ``factor = min(1, l2_norm_clip / (norm + 1e-6))``, so the result for a fixed batch
equals opacus' ``DPOptimizer`` (tested). The noise comes from a `functrain.random` key, so a
private run is still a pure function of its seed and compiles as one graph.

How much privacy a run spends (its epsilon for a given delta) is computed by a maintained
accountant, opacus' (an optional dependency: ``pip install opacus``), rather than here.

Example:
    >>> import torch, functrain as ft
    >>> model = torch.nn.Linear(4, 2)
    >>> def loss_fn(params, x, y):
    ...     out, _ = ft.call(model, params, {}, x)
    ...     return torch.nn.functional.cross_entropy(out, y)
    >>> state = ft.TrainState.create(model, ft.optim.sgd(0.1))
    >>> private_grads = ft.privacy.dp_grads(loss_fn, l2_norm_clip=1.0, noise_multiplier=1.1)
    >>> key = ft.random.fold_in(state.rng, state.step)
    >>> grads, loss = private_grads(state.params, key, torch.randn(8, 4), torch.zeros(8).long())
    >>> state = state.apply_gradients(grads)
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch

from . import random as _random
from . import tree as _tree
from ._errors import check_choice, check_int, check_number, describe
from .per_example import per_example_grads

__all__ = [
    "add_noise",
    "clip_per_example",
    "dp_grads",
    "epsilon",
    "noise_multiplier_for",
]

# opacus' DPOptimizer divides by (norm + 1e-6); the same constant keeps results equal.
_NORM_EPS = 1e-6
ACCOUNTANTS = ("rdp", "prv", "gdp")


def clip_per_example(grads: Any, l2_norm_clip: float | torch.Tensor
                     ) -> tuple[Any, torch.Tensor]:
    """Clip each example's gradient to L2 norm ``l2_norm_clip`` and sum over the batch.

    Args:
        grads: per-example gradients, every leaf with the same leading batch dimension B
            (from `functrain.per_example_grads`).
        l2_norm_clip: the largest per-example norm; the norm is taken over all leaves of one
            example together.

    Returns:
        ``(summed, norms)``: the clipped gradients summed over the batch (the structure of one
        example's gradient) and the per-example norms before clipping, shape (B,).

    Example:
        >>> import torch
        >>> g = {"w": torch.tensor([[3.0, 4.0], [0.3, 0.4]])}   # norms 5 and 0.5
        >>> summed, norms = clip_per_example(g, 1.0)
        >>> summed["w"], norms
        (tensor([0.9000, 1.2000]), tensor([5.0000, 0.5000]))
    """
    if not torch.compiler.is_compiling():
        if not isinstance(l2_norm_clip, torch.Tensor):
            check_number("l2_norm_clip", l2_norm_clip, low=0, low_open=True)
        _check_per_example(grads)
    norms = _norms(grads)
    factor = _clip_factor(norms, l2_norm_clip)
    summed = _tree.map(
        lambda x: torch.einsum("b,b...->...", factor.to(x.dtype), x), grads)
    return summed, norms


def _norms(grads: Any) -> torch.Tensor:
    """Per-example L2 norms over all leaves together, shape (B,), in float32 (float64 when a
    leaf is float64)."""
    leaves = _tree.leaves(grads)
    dtype = functools.reduce(torch.promote_types, [x.dtype for x in leaves], torch.float32)
    return torch.stack([x.reshape(x.shape[0], -1).to(dtype).pow(2).sum(1) for x in leaves],
                       1).sum(1).sqrt()


def _clip_factor(norms: torch.Tensor, l2_norm_clip: float | torch.Tensor) -> torch.Tensor:
    """opacus' per-example scale, ``min(1, clip / (norm + 1e-6))``."""
    return (l2_norm_clip / (norms + _NORM_EPS)).clamp(max=1.0)


def add_noise(summed: Any, key: torch.Tensor, *, l2_norm_clip: float | torch.Tensor,
              noise_multiplier: float | torch.Tensor, batch_size: int | torch.Tensor) -> Any:
    """Add Gaussian noise to summed clipped gradients and divide by the batch size.

    The noise is one draw for all leaves, ``z = normal(key, (P,))`` with P the total number
    of elements, cut in `functrain.tree.leaves` order (each leaf takes the next
    ``numel`` values, in its row-major order); a leaf gets
    ``noise_multiplier * l2_norm_clip * z_leaf``, then is divided by ``batch_size``: the
    DP-SGD update direction for a mean loss (opacus' ``DPOptimizer`` with
    ``loss_reduction="mean"``, ``expected_batch_size=batch_size``). One draw instead of one
    per leaf: the keyed draw is most of a DP-SGD step's time, and one call costs less than
    many (see ``benchmarks/per_example.py``).

    Args:
        summed: the output of `clip_per_example`.
        key: a `functrain.random` key, fresh for every step (e.g.
            ``ft.random.fold_in(state.rng, state.step)``). Reusing a key reuses the noise and
            voids the privacy guarantee.
        l2_norm_clip: the clipping norm used.
        noise_multiplier: noise standard deviation in units of ``l2_norm_clip``.
        batch_size: the divisor (the expected batch size under Poisson sampling).

    Returns:
        The noisy mean gradient, the structure of ``summed``.

    Example:
        >>> import torch, functrain as ft
        >>> g = add_noise({"w": torch.zeros(10000)}, ft.random.key(0), l2_norm_clip=1.0,
        ...               noise_multiplier=2.0, batch_size=4)
        >>> round(g["w"].std().item(), 1)    # 2.0 * 1.0 / 4
        0.5
    """
    if not torch.compiler.is_compiling():
        if not isinstance(noise_multiplier, torch.Tensor):
            check_number("noise_multiplier", noise_multiplier, low=0)
        if not isinstance(l2_norm_clip, torch.Tensor):
            check_number("l2_norm_clip", l2_norm_clip, low=0, low_open=True)
        if not isinstance(batch_size, torch.Tensor):
            check_int("batch_size", batch_size, minimum=1)
    std = noise_multiplier * l2_norm_clip
    sizes = [x.numel() for x in _tree.leaves(summed)]
    pieces = iter(torch.split(_random.normal(key, (sum(sizes),)), sizes))

    def noisy(x: torch.Tensor) -> torch.Tensor:
        z = next(pieces).view(x.shape)
        wide = torch.promote_types(x.dtype, torch.float32)  # float64 grads stay float64
        return ((x.to(wide) + std * z) / batch_size).to(x.dtype)

    return _tree.map(noisy, summed)


def dp_grads(
    loss_fn: Callable[..., Any],
    *,
    l2_norm_clip: float,
    noise_multiplier: float,
    has_aux: bool = False,
) -> Callable[..., tuple[Any, Any]]:
    """DP-SGD gradients in one call: per-example grads, clipping, noise, mean.

    Args:
        loss_fn: ``loss_fn(params, *batch) -> loss`` for a batch (see
            `functrain.per_example_grads`; the model must have no cross-example layer such as
            BatchNorm in training mode).
        l2_norm_clip: the largest per-example gradient norm (opacus' ``max_grad_norm``).
        noise_multiplier: noise std in units of ``l2_norm_clip`` (opacus' ``noise_multiplier``).
        has_aux: ``loss_fn`` returns ``(loss, aux)``.

    Computed as `functrain.per_example_grads`, then `clip_per_example`, then `add_noise`
    (one keyed draw for all leaves). Summing the clipped gradients instead as the gradient of
    the factor-weighted losses (one more backward pass) was measured: 4% faster on the MLP of
    ``benchmarks/per_example.py`` but 36% slower on its CNN, so it is not done.

    Returns:
        ``fn(params, key, *batch) -> (grads, loss)``: ``grads`` the noisy mean of the clipped
        per-example gradients (divided by the batch's size), ``loss`` the batch's mean loss
        (``(loss, aux)`` with ``has_aux``, aux stacked per example).

    Raises:
        TypeError / ValueError: for bad arguments, naming the argument.

    Example:
        >>> import torch, functrain as ft
        >>> def loss_fn(params, x):
        ...     return (x @ params["w"]).pow(2).mean()
        >>> f = dp_grads(loss_fn, l2_norm_clip=1.0, noise_multiplier=0.0)
        >>> grads, loss = f({"w": torch.ones(2)}, ft.random.key(0), torch.ones(4, 2))
        >>> grads["w"]     # each example's gradient (4, 4) clipped to norm 1
        tensor([0.7071, 0.7071])
    """
    check_number("l2_norm_clip", l2_norm_clip, low=0, low_open=True)
    check_number("noise_multiplier", noise_multiplier, low=0)
    per_example = per_example_grads(loss_fn, has_aux=has_aux)

    def fn(params: Any, key: torch.Tensor, *batch: Any) -> tuple[Any, Any]:
        grads, value = per_example(params, *batch)
        summed, _ = clip_per_example(grads, l2_norm_clip)
        n = _tree.leaves(grads)[0].shape[0]
        noisy = add_noise(summed, key, l2_norm_clip=l2_norm_clip,
                          noise_multiplier=noise_multiplier, batch_size=n)
        if has_aux:
            losses, aux = value
            return noisy, (losses.mean(), aux)
        return noisy, value.mean()

    return fn


def _check_per_example(grads: Any) -> None:
    paths = _tree.leaves_with_path(grads, "grads")
    if not paths:
        raise ValueError("grads: expected per-example gradients, got an empty tree.")
    n = None
    for p, x in paths:
        if not isinstance(x, torch.Tensor) or x.ndim == 0:
            raise TypeError(f"{p}: expected a tensor with a leading batch dimension, got "
                            f"{describe(x)}. HINT: compute them with "
                            "functrain.per_example_grads.")
        if n is None:
            n = x.shape[0]
        elif x.shape[0] != n:
            raise ValueError(f"{p}: expected a leading batch dimension of {n} (as the first "
                             f"leaf), got shape {tuple(x.shape)}.")


def _accountant(name: str) -> Any:
    check_choice("accountant", name, ACCOUNTANTS)
    try:
        from opacus.accountants import create_accountant
    except ImportError:
        raise ImportError("functrain.privacy accounting uses opacus' accountants, which are not "
                          "installed. HINT: pip install opacus.") from None
    return create_accountant(mechanism=name)


def epsilon(*, noise_multiplier: float, sample_rate: float, steps: int, delta: float,
            accountant: str = "rdp") -> float:
    """The privacy spent by ``steps`` DP-SGD steps, computed by opacus' accountant.

    Args:
        noise_multiplier: as in `dp_grads`.
        sample_rate: the probability that an example is in a batch (batch size / dataset size
            for Poisson sampling).
        steps: the number of DP-SGD steps taken.
        delta: the target delta (usually below 1 / dataset size).
        accountant: ``"rdp"`` (opacus' default), ``"prv"`` or ``"gdp"``.

    Returns:
        epsilon, as a float.

    Raises:
        ImportError: if opacus is not installed (with a HINT).
        TypeError / ValueError: for bad arguments, naming the argument.

    Example:
        >>> round(epsilon(noise_multiplier=1.1, sample_rate=256 / 60000, steps=14000,
        ...               delta=1e-5), 2)
        2.59
    """
    check_number("noise_multiplier", noise_multiplier, low=0, low_open=True)
    check_number("sample_rate", sample_rate, low=0, high=1, low_open=True)
    check_int("steps", steps, minimum=0)
    check_number("delta", delta, low=0, high=1, low_open=True, high_open=True)
    acc = _accountant(accountant)
    for _ in range(steps):
        acc.step(noise_multiplier=noise_multiplier, sample_rate=sample_rate)
    if steps == 0:
        return 0.0
    return float(acc.get_epsilon(delta=delta))


def noise_multiplier_for(*, target_epsilon: float, delta: float, sample_rate: float,
                         steps: int, accountant: str = "rdp") -> float:
    """The noise multiplier that spends ``target_epsilon`` in ``steps`` steps (opacus' search).

    Args:
        target_epsilon: the privacy budget.
        delta: the target delta.
        sample_rate: as in `epsilon`.
        steps: the planned number of steps.
        accountant: ``"rdp"``, ``"prv"`` or ``"gdp"``.

    Returns:
        The noise multiplier, as a float.

    Example:
        >>> sigma = noise_multiplier_for(target_epsilon=3.0, delta=1e-5,
        ...                              sample_rate=0.004, steps=1000)
        >>> round(sigma, 2)
        0.69
    """
    check_number("target_epsilon", target_epsilon, low=0, low_open=True)
    check_number("delta", delta, low=0, high=1, low_open=True, high_open=True)
    check_number("sample_rate", sample_rate, low=0, high=1, low_open=True)
    check_int("steps", steps, minimum=1)
    _accountant(accountant)  # checks the name and that opacus is there
    from opacus.accountants.utils import get_noise_multiplier

    return float(get_noise_multiplier(target_epsilon=target_epsilon, target_delta=delta,
                                      sample_rate=sample_rate, steps=steps,
                                      accountant=accountant))
