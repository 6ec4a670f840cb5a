"""Random torch functions `keyed` cannot key: each raises, with what to do instead."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

_UNSUPPORTED: dict[Callable, tuple[str, str]] = {
    torch.multinomial: (
        "torch.multinomial",
        "sample with functrain.random.uniform and "
        "torch.searchsorted over the cumulative probabilities.",
    ),
    Tensor.multinomial: (
        "Tensor.multinomial",
        "sample with functrain.random.uniform and "
        "torch.searchsorted over the cumulative probabilities.",
    ),
    torch.poisson: ("torch.poisson", "draw outside the scope from an explicit generator."),
    torch.binomial: ("torch.binomial", "draw outside the scope from an explicit generator."),
    Tensor.random_: ("Tensor.random_", "use torch.randint (keyed) or functrain.random.randint."),
    Tensor.geometric_: ("Tensor.geometric_", "transform functrain.random.uniform."),
    Tensor.log_normal_: ("Tensor.log_normal_", "use torch.exp of a keyed torch.randn."),
    Tensor.cauchy_: ("Tensor.cauchy_", "transform functrain.random.uniform."),
}

# torch's private samplers, matched by name at use (see functrain._compat.private_sampler_name).
_UNSUPPORTED_PRIVATE: dict[str, tuple[str, str]] = {
    "_standard_gamma": (
        "torch._standard_gamma (Gamma, Beta, Dirichlet sampling)",
        "draw outside the scope from an explicit generator.",
    ),
    "_sample_dirichlet": (
        "torch._sample_dirichlet (Dirichlet sampling)",
        "draw outside the scope from an explicit generator.",
    ),
}
