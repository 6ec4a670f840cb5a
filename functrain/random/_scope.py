"""The keyed scope: a `TorchFunctionMode` that routes torch's random ops to a key."""

from __future__ import annotations

import torch
from torch import Tensor
from torch.overrides import TorchFunctionMode

from .._compat import private_sampler_name
from ._handled import _HANDLERS, _PASS
from ._keys import _check_key, fold_in
from ._unhandled import _UNSUPPORTED, _UNSUPPORTED_PRIVATE

# --------------------------------------------------------------------------------------------
# The keyed scope.


class KeyedRandomness(TorchFunctionMode):
    """The scope returned by `keyed`: routes torch's random ops to a key. Make it with `keyed`.

    Attributes:
        key: The scope's key.
        draws: How many draws the scope has made; draw ``i`` used ``fold_in(key, i)``.

    Example:
        >>> import torch, functrain as ft
        >>> with ft.random.keyed(ft.random.key(0)) as scope:
        ...     a, b = torch.rand(2), torch.randn(3)
        >>> scope.draws
        2
    """

    def __init__(self, key: Tensor) -> None:
        super().__init__()
        _check_key(key, "keyed")
        self.key = key
        self.draws = 0

    def next_key(self, device: torch.device | str | None = None) -> Tensor:
        """The key for the next draw, ``fold_in(self.key, self.draws)``, on ``device``.

        Example:
            >>> import torch, functrain as ft
            >>> k = ft.random.key(0)
            >>> scope = ft.random.keyed(k)
            >>> torch.equal(scope.next_key(), ft.random.fold_in(k, 0)), scope.draws
            (True, 1)
        """
        k = fold_in(self.key, self.draws)
        self.draws += 1
        return k if device is None else k.to(device)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        handler = _HANDLERS.get(func)
        if handler is not None:
            out = handler(self, *args, **kwargs)
            if out is not _PASS:
                return out
        else:
            unsupported = _UNSUPPORTED.get(func)
            if unsupported is None:
                private = private_sampler_name(func)
                unsupported = None if private is None else _UNSUPPORTED_PRIVATE[private]
            if unsupported is not None:
                raise NotImplementedError(
                    f"{unsupported[0]} is not supported inside functrain.random.keyed(...): "
                    f"it would draw from the global generator. HINT: {unsupported[1]}"
                )
        return func(*args, **kwargs)


def keyed(key: Tensor) -> KeyedRandomness:
    """A scope in which dropout and ``torch.rand*`` draw from ``key``, not the global generator.

    Inside ``with keyed(key):``, the *i*-th random op (counting from 0) draws from
    ``fold_in(key, i)``, so a key determines every draw of a fixed program. Keyed ops:
    ``F.dropout`` (so ``nn.Dropout``), ``F.dropout1d/2d/3d``, ``F.alpha_dropout``,
    ``F.feature_alpha_dropout``, ``torch.dropout`` and friends, ``F.scaled_dot_product_attention``
    with ``dropout_p > 0`` (math path), ``F.rrelu`` in training, ``F.gumbel_softmax``,
    ``F.fractional_max_pool2d/3d``, ``torch.rand``, ``torch.randn``, ``torch.randint``,
    ``torch.randperm``, ``torch.normal``, ``torch.bernoulli``, the ``*_like`` variants, and
    ``Tensor.uniform_``, ``normal_``, ``bernoulli_``, ``exponential_`` (so ``nn.init`` too).
    Other random ops raise `NotImplementedError`, as do ``generator=`` and ``out=`` arguments.
    Outside the scope nothing changes.

    Enter it inside the function you compile: it then traces into the graph with
    ``fullgraph=True``, also under `torch.func.grad` over `torch.func.functional_call`, and
    compiles once however the key's value changes. In compiled code ``torch.rand_like``,
    ``randn_like``, ``randint_like`` and ``torch.normal`` escape the scope (a Dynamo gap; see
    the module docstring): use ``torch.rand(x.shape, ...)`` there. Dropout honours
    ``training=False`` (identity) and ``inplace=True``.

    Args:
        key: A key, shape ``(2,)``, e.g. ``fold_in(state.rng, state.step)``.

    Returns:
        A context manager (a `torch.overrides.TorchFunctionMode`).

    Raises:
        TypeError: ``key`` is not a key.

    Example:
        >>> import torch, functrain as ft
        >>> k = ft.random.key(0)
        >>> with ft.random.keyed(k):
        ...     a = torch.rand(3)
        ...     b = torch.nn.functional.dropout(torch.ones(4), 0.5)
        >>> torch.equal(a, ft.random.uniform(ft.random.fold_in(k, 0), (3,)))
        True
        >>> with ft.random.keyed(k):
        ...     try:
        ...         torch.multinomial(torch.ones(3), 1)
        ...     except NotImplementedError as e:
        ...         print(str(e)[:41])
        torch.multinomial is not supported inside
    """
    return KeyedRandomness(key)

