"""The optimizer abstraction: a `GradientTransformation` is a pair of pure functions.

``init(params) -> state`` builds the optimizer state; ``update(updates, state, params=None) ->
(updates, new_state)`` turns gradients into parameter updates. Nothing is mutated: every call
returns new tensors, so a whole training step can be written as a pure function and compiled as
one graph. In-place writing of the results back into old buffers is the runner's job.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, NamedTuple, Protocol

import torch

from functrain import tree as _tree

from . import _checks, _foreach

Params = Any
"""A pytree of floating-point tensors."""
Updates = Any
"""A pytree of updates (or gradients) with the structure of the params."""
OptState = Any
"""A pytree of tensors: the optimizer state, usually a NamedTuple."""
Schedule = Callable[[torch.Tensor], torch.Tensor]
"""A function of the 0-d int64 step count, returning a 0-d float tensor."""
ScalarOrSchedule = float | torch.Tensor | Schedule
# Where a transform applies: a tree of bools like params, a callable building one, or None.
MaskOrFn = Any | Callable[[Params], Any] | None
"""A constant (Python number or 0-d tensor) or a `Schedule`."""


class TransformInitFn(Protocol):
    def __call__(self, params: Params) -> OptState: ...


class TransformUpdateFn(Protocol):
    def __call__(self, updates: Updates, state: OptState,
                 params: Params | None = None, **extra_args: Any) -> tuple[Updates, OptState]: ...


class GradientTransformation(NamedTuple):
    """A pair of pure functions ``(init, update)``: optax's optimizer abstraction.

    Attributes:
        init: ``init(params) -> state``.
        update: ``update(updates, state, params=None) -> (updates, new_state)``. ``updates``
            are usually gradients; the returned updates are added to the params by
            `apply_updates`. Some transformations need a value that only the training step
            knows (the loss for `polyak_sgd` and `reduce_on_plateau`, a gradient function for
            `sam`'s opaque mode): their ``update`` takes it as a keyword (``value=loss``), and
            `chain` and the wrappers pass such keywords on to every transformation that
            accepts them (optax's ``GradientTransformationExtraArgs``).

    Example:
        >>> import torch
        >>> from functrain import optim
        >>> opt = optim.sgd(learning_rate=0.1)
        >>> params = {"w": torch.tensor([1.0, 2.0])}
        >>> state = opt.init(params)
        >>> updates, state = opt.update({"w": torch.tensor([1.0, 1.0])}, state, params)
        >>> optim.apply_updates(params, updates)["w"]
        tensor([0.9000, 1.9000])
    """

    init: TransformInitFn
    update: TransformUpdateFn


class EmptyState(NamedTuple):
    """The state of a stateless transformation.

    Example:
        >>> import torch
        >>> from functrain import optim
        >>> optim.scale(2.0).init({"w": torch.ones(1)})
        EmptyState()
    """


def identity() -> GradientTransformation:
    """A transformation that returns the updates unchanged.

    Returns:
        A `GradientTransformation` with `EmptyState`.

    Example:
        >>> import torch
        >>> from functrain import optim
        >>> optim.identity().update({"w": torch.ones(2)}, optim.EmptyState())[0]
        {'w': tensor([1., 1.])}
    """

    def init_fn(params: Params) -> EmptyState:
        del params
        return EmptyState()

    def update_fn(updates: Updates, state: EmptyState, params: Params | None = None):
        del params
        return updates, state

    return GradientTransformation(init_fn, update_fn)


def set_to_zero() -> GradientTransformation:
    """A transformation that replaces every update with zeros (e.g. to freeze some params).

    Returns:
        A `GradientTransformation` with `EmptyState`.

    Example:
        >>> import torch
        >>> from functrain import optim
        >>> optim.set_to_zero().update({"w": torch.ones(2)}, optim.EmptyState())[0]
        {'w': tensor([0., 0.])}
    """

    def init_fn(params: Params) -> EmptyState:
        del params
        return EmptyState()

    def update_fn(updates: Updates, state: EmptyState, params: Params | None = None):
        del params
        return _tree.map(torch.zeros_like, updates), state

    return GradientTransformation(init_fn, update_fn)


def takes_extra_args(t: Any) -> bool | None:
    """Whether ``t.update`` accepts keyword arguments beyond ``(updates, state, params)``.

    Wrappers evaluate this once, when they are built. An optimizer built inside a compiled
    step (an inner loop, as in MAML) gets ``None`` (not known yet: signatures cannot be read
    while Dynamo traces), and `call_update` decides only if extra arguments are passed.
    """
    if torch.compiler.is_compiling():
        return None
    try:
        parameters = inspect.signature(t.update).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.kind in (p.VAR_KEYWORD, p.KEYWORD_ONLY) for p in parameters)


def call_update(t: Any, takes_extra: bool | None, updates: Updates, state: OptState,
                params: Params | None, extra_args: dict[str, Any]) -> tuple[Updates, OptState]:
    """``t.update(updates, state, params, **extra_args)``, dropping the keywords if ``t``
    takes none (``takes_extra``: `takes_extra_args` of ``t``), as optax's
    ``with_extra_args_support`` does."""
    if extra_args and (takes_extra or (takes_extra is None and takes_extra_args(t))):
        return t.update(updates, state, params, **extra_args)
    return t.update(updates, state, params)


def chain(*transforms: GradientTransformation) -> GradientTransformation:
    """Apply transformations one after the other; the state is the tuple of their states.

    Args:
        *transforms: `GradientTransformation` s (or objects with ``init`` and ``update``, such
            as `MultiSteps`), applied left to right.

    Returns:
        A `GradientTransformation` whose state is a tuple with one entry per transform.

    Raises:
        TypeError: if an argument is not a `GradientTransformation`.

    Example:
        >>> import torch
        >>> from functrain import optim
        >>> opt = optim.chain(optim.clip(1.0), optim.scale(-0.5))
        >>> state = opt.init({"w": torch.zeros(2)})
        >>> updates, state = opt.update({"w": torch.tensor([3.0, -0.2])}, state)
        >>> updates["w"]
        tensor([-0.5000,  0.1000])
    """
    for i, t in enumerate(transforms):
        if not (callable(getattr(t, "init", None)) and callable(getattr(t, "update", None))):
            raise TypeError(
                f"chain: transforms[{i}]: expected a GradientTransformation, got "
                f"{_checks.describe(t)}. HINT: call the factory, e.g. optim.adam(1e-3), "
                "not optim.adam.")

    takes = [takes_extra_args(t) for t in transforms]

    def init_fn(params: Params) -> tuple:
        return tuple(t.init(params) for t in transforms)

    def update_fn(updates: Updates, state: tuple, params: Params | None = None,
                  **extra_args: Any):
        if not isinstance(state, tuple) or len(state) != len(transforms):
            raise TypeError(
                f"chain: state: expected a tuple of {len(transforms)} states, got "
                f"{_checks.describe(state)}. HINT: pass the state returned by this chain's init.")
        new_state = []
        for t, takes_extra, s in zip(transforms, takes, state, strict=True):
            updates, s = call_update(t, takes_extra, updates, s, params, extra_args)
            new_state.append(s)
        return updates, tuple(new_state)

    return GradientTransformation(init_fn, update_fn)


def apply_updates(params: Params, updates: Updates) -> Params:
    """Return ``params + updates``, leaf by leaf, each result in its parameter's dtype.

    Updates computed in a wider dtype (e.g. float32 updates for bfloat16 params) are added in
    the wider dtype and the sum is cast back, so a parameter never changes dtype. Pure: nothing
    is modified in place.

    Args:
        params: a pytree of floating-point tensors.
        updates: a pytree with ``params``' structure and shapes (e.g. from ``opt.update``).

    Returns:
        The new params.

    Raises:
        functrain.tree.TreeMismatchError: if ``updates`` differs from ``params`` in structure
            or shape; names the leaf path.
        TypeError: if a leaf of ``params`` is not a floating-point tensor.

    Example:
        >>> import torch
        >>> from functrain import optim
        >>> params = {"w": torch.ones(2, dtype=torch.bfloat16)}
        >>> new = optim.apply_updates(params, {"w": torch.tensor([0.5, -0.25])})
        >>> new["w"]
        tensor([1.5000, 0.7500], dtype=torch.bfloat16)
    """
    fast = _foreach.leaves(params, updates)
    if fast:  # eager: one foreach op, the same bits (its checks imply the two below)
        (ps, us), (spec, _) = fast
        return _foreach.unflatten(spec, _foreach.add(ps, us))
    _checks.float_leaves(params, "params")
    _checks.updates(updates, params, dtype=False)
    return _tree.map(lambda p, u: (p + u).to(p.dtype), params, updates)


def device_of(tree: Any) -> torch.device:
    """The device of the first tensor leaf (CPU for an empty tree)."""
    for x in _tree.leaves(tree):
        if isinstance(x, torch.Tensor):
            return x.device
    return torch.device("cpu")


def zero_count(params: Params) -> torch.Tensor:
    """A 0-d int64 step counter on the params' device."""
    return torch.zeros((), dtype=torch.int64, device=device_of(params))
