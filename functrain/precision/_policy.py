"""`Policy`: which dtype the params live in, which the forward computes in, which it returns."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import torch

from .. import tree as _tree
from .._errors import describe
from ._scale import DynamicLossScale, NoOpLossScale

__all__ = ["Policy"]

_FLOATS = (torch.float64, torch.float32, torch.bfloat16, torch.float16)

# name -> (param_dtype, compute_dtype, output_dtype); None: leave as it is.
_POLICIES: dict[str, tuple[torch.dtype | None, ...]] = {
    "32": (None, None, None),
    "bf16-mixed": (torch.float32, torch.bfloat16, torch.float32),
    "16-mixed": (torch.float32, torch.float16, torch.float32),
    "bf16-true": (torch.bfloat16, torch.bfloat16, torch.float32),
}
_ALIASES = {"32-true": "32", "bf16": "bf16-mixed", "16": "16-mixed"}  # Lightning's names


@dataclasses.dataclass(frozen=True)
class Policy:
    """A mixed-precision policy, in JAX jmp's terms: param, compute and output dtypes.

    Build one by name with `from_name`: ``"32"``, ``"bf16-mixed"``, ``"16-mixed"`` or
    ``"bf16-true"`` (Lightning's names). ``None`` for a dtype means "leave it as it is".

    * ``"32"``: nothing is cast, no autocast (a float64 model stays float64, as with
      Lightning's ``"32-true"``).
    * ``"bf16-mixed"``: float32 master params and optimizer state; the forward runs under
      ``torch.autocast(dtype=torch.bfloat16)``; gradients come back in float32.
    * ``"16-mixed"``: the same with float16, plus a `DynamicLossScale` (float16 gradients
      underflow without one); write the step with `functrain.precision.value_and_grad` and
      `functrain.precision.apply_gradients`.
    * ``"bf16-true"``: params, floating buffers, optimizer moments and floating batch tensors
      are all bfloat16; no autocast. Half the memory; updates are rounded to bfloat16, so
      small learning rates can stall (the params' dtype is kept by every update).

    Attributes:
        param_dtype: dtype of the params and floating buffers in the state.
        compute_dtype: dtype the forward computes in (via autocast when it differs from
            ``param_dtype``, else by casting the batch).
        output_dtype: dtype for the model's outputs (`cast_to_output`), e.g. logits before
            a loss.

    Raises:
        TypeError: if a dtype is not a floating-point ``torch.dtype`` or ``None``.

    Example:
        >>> import torch
        >>> from functrain import precision as mp
        >>> policy = mp.Policy.from_name("bf16-mixed")
        >>> policy.param_dtype, policy.compute_dtype, policy.needs_loss_scale
        (torch.float32, torch.bfloat16, False)
        >>> with policy.autocast("cpu"):
        ...     y = torch.ones(2, 3) @ torch.ones(3, 4)
        >>> y.dtype
        torch.bfloat16
    """

    param_dtype: torch.dtype | None = None
    compute_dtype: torch.dtype | None = None
    output_dtype: torch.dtype | None = None

    def __post_init__(self) -> None:
        for f in ("param_dtype", "compute_dtype", "output_dtype"):
            v = getattr(self, f)
            if v is not None and v not in _FLOATS:
                raise TypeError(f"{f}: expected None or one of "
                                f"{', '.join(map(str, _FLOATS))}, got {v!r}.")

    @classmethod
    def from_name(cls, name: str) -> Policy:
        """Return the policy called ``name``.

        Args:
            name: ``"32"`` (alias ``"32-true"``), ``"bf16-mixed"`` (``"bf16"``),
                ``"16-mixed"`` (``"16"``) or ``"bf16-true"``.

        Raises:
            ValueError: for any other name; the message lists the options.

        Example:
            >>> from functrain import precision as mp
            >>> policy = mp.Policy.from_name("16")
            >>> policy.param_dtype, policy.compute_dtype, policy.output_dtype
            (torch.float32, torch.float16, torch.float32)
        """
        key = _ALIASES.get(name, name) if isinstance(name, str) else name
        if key not in _POLICIES:
            names = ", ".join(repr(n) for n in [*_POLICIES, *_ALIASES])
            raise ValueError(f"precision: expected one of {names}, got {name!r}. "
                             "HINT: 'bf16-mixed' on recent GPUs and CPUs, '16-mixed' on older "
                             "GPUs, '32' for full precision.")
        return cls(*_POLICIES[key])

    @property
    def uses_autocast(self) -> bool:
        """True when the forward runs under ``torch.autocast`` (the ``-mixed`` policies).

        Example:
            >>> from functrain import precision as mp
            >>> mp.Policy.from_name("bf16-mixed").uses_autocast, mp.Policy.from_name(
            ...     "bf16-true").uses_autocast
            (True, False)
        """
        return self.compute_dtype is not None and self.compute_dtype != self.param_dtype

    @property
    def needs_loss_scale(self) -> bool:
        """True when the compute dtype is float16: gradients need a `DynamicLossScale`.

        Example:
            >>> from functrain import precision as mp
            >>> mp.Policy.from_name("16-mixed").needs_loss_scale
            True
        """
        return self.compute_dtype == torch.float16

    def autocast(self, device_type: str | torch.device) -> contextlib.AbstractContextManager:
        """A context manager for the forward: ``torch.autocast`` for mixed policies, else a null
        context. Works inside ``torch.compile(fullgraph=True)`` and around ``torch.func.grad``.

        Args:
            device_type: ``"cpu"``, ``"cuda"``, ... (or a ``torch.device``).

        Example:
            >>> import torch
            >>> from functrain import precision as mp
            >>> with mp.Policy.from_name("16-mixed").autocast("cpu"):
            ...     (torch.ones(2, 2) @ torch.ones(2, 2)).dtype
            torch.float16
        """
        device_type = getattr(device_type, "type", device_type)
        if not self.uses_autocast:
            return contextlib.nullcontext()
        return torch.autocast(device_type, dtype=self.compute_dtype)

    def cast_to_param(self, tree: Any) -> Any:
        """Cast the floating-point tensor leaves of ``tree`` to ``param_dtype``.

        Example:
            >>> import torch
            >>> from functrain import precision as mp
            >>> mp.Policy.from_name("bf16-true").cast_to_param({"w": torch.ones(1)})["w"].dtype
            torch.bfloat16
        """
        return _tree.cast(tree, self.param_dtype)

    def cast_to_compute(self, tree: Any) -> Any:
        """Cast the floating-point tensor leaves of ``tree`` to ``compute_dtype``.

        Example:
            >>> import torch
            >>> from functrain import precision as mp
            >>> mp.Policy.from_name("16-mixed").cast_to_compute(torch.ones(1)).dtype
            torch.float16
        """
        return _tree.cast(tree, self.compute_dtype)

    def cast_to_output(self, tree: Any) -> Any:
        """Cast the floating-point tensor leaves of ``tree`` to ``output_dtype``.

        Example:
            >>> import torch
            >>> from functrain import precision as mp
            >>> logits = torch.ones(2, dtype=torch.bfloat16)
            >>> mp.Policy.from_name("bf16-true").cast_to_output(logits).dtype
            torch.float32
        """
        return _tree.cast(tree, self.output_dtype)

    def cast_batch(self, batch: Any) -> Any:
        """What the runner does to each batch: without autocast (``"bf16-true"``), cast its
        floating tensors to ``compute_dtype`` so they meet the params' dtype; otherwise return
        it unchanged (autocast casts per op, and float targets keep their precision).

        Example:
            >>> import torch
            >>> from functrain import precision as mp
            >>> batch = (torch.ones(2), torch.ones(2, dtype=torch.long))
            >>> x, y = mp.Policy.from_name("bf16-true").cast_batch(batch)
            >>> x.dtype, y.dtype
            (torch.bfloat16, torch.int64)
        """
        if self.uses_autocast:
            return batch
        return _tree.cast(batch, self.compute_dtype)

    def cast_state(self, state: Any) -> Any:
        """Cast a `functrain.TrainState` to this policy: params and floating buffers to
        ``param_dtype``, and the optimizer state to the dtypes ``tx.init`` gives for the cast
        params (so with ``"bf16-true"`` Adam's moments are bfloat16, as with a bf16 module in
        plain PyTorch, while step counts and injected hyperparameters keep their dtypes).

        Any other pytree has all its floating-point leaves cast (which of them are params is
        unknown; ``module.to(dtype)`` does the same). A leaf already in its dtype is not copied,
        and a state with nothing to cast (or ``param_dtype=None``) is returned as is.

        Raises:
            functrain.tree.TreeMismatchError: if ``opt_state`` does not match what
                ``tx.init(params)`` builds; names the leaf path.

        Example:
            >>> import torch, functrain as ft
            >>> from functrain import precision as mp
            >>> state = ft.TrainState.create(torch.nn.Linear(2, 1), ft.optim.adam(1e-3))
            >>> state = mp.Policy.from_name("bf16-true").cast_state(state)
            >>> state.params["weight"].dtype, state.opt_state[0].mu["weight"].dtype
            (torch.bfloat16, torch.bfloat16)
            >>> mp.Policy.from_name("bf16-true").cast_state(state) is state
            True
        """
        if self.param_dtype is None:
            return state
        if not _is_train_state(state):
            new = _tree.cast(state, self.param_dtype)
            return state if _same_leaves(state, new) else new
        params = _tree.cast(state.params, self.param_dtype)
        buffers = _tree.cast(getattr(state, "buffers", {}), self.param_dtype)
        opt_state = getattr(state, "opt_state", None)
        tx = getattr(state, "tx", None)
        if tx is not None and not _same_leaves(state.params, params):
            ref = _init_on_meta(tx, params)
            _tree.assert_trees_match(ref, opt_state, "state.opt_state", dtype=False)
            opt_state = _tree.map(
                lambda r, x: x.to(r.dtype) if isinstance(x, torch.Tensor) else x, ref, opt_state)
        if _same_leaves((state.params, getattr(state, "buffers", {}), state.opt_state),
                        (params, buffers, opt_state)):
            return state
        changes = {"params": params, "opt_state": opt_state}
        if hasattr(state, "buffers"):
            changes["buffers"] = buffers
        return _replace(state, **changes)

    def prepare_state(self, state: Any,
                      loss_scale: DynamicLossScale | NoOpLossScale | None = None) -> Any:
        """`cast_state`, then attach a loss scale when the policy needs one: what
        ``fit(precision=...)`` does with its initial state.

        The loss scale goes to ``state.extras["loss_scale"]``. One already there (a resumed
        run) is kept; ``loss_scale`` replaces it; the default is ``DynamicLossScale()`` (on
        the device of ``state.step``).

        Example:
            >>> import torch, functrain as ft
            >>> from functrain import precision as mp
            >>> state = ft.TrainState.create(torch.nn.Linear(2, 1), ft.optim.sgd(0.1))
            >>> state = mp.Policy.from_name("16-mixed").prepare_state(state)
            >>> state.extras["loss_scale"].loss_scale
            tensor(65536.)
        """
        state = self.cast_state(state)
        if not self.needs_loss_scale and loss_scale is None:
            return state
        if not (_is_train_state(state) and isinstance(getattr(state, "extras", None), dict)):
            raise TypeError(f"state: expected a functrain.TrainState, got {describe(state)}. "
                            "HINT: a state class of your own carries the loss scale if it has "
                            "params, opt_state, tx and an extras dict; or keep the loss scale "
                            "in your own state and use DynamicLossScale's scale/unscale/adjust.")
        if loss_scale is None:
            if isinstance(state.extras.get("loss_scale"), DynamicLossScale):
                return state
            loss_scale = DynamicLossScale(device=state.step.device)
        if not isinstance(loss_scale, (DynamicLossScale, NoOpLossScale)):
            raise TypeError(f"loss_scale: expected a DynamicLossScale or NoOpLossScale, got "
                            f"{describe(loss_scale)}.")
        return _replace(state, extras={**state.extras, "loss_scale": loss_scale})

    def wrap_step(self, step_fn: Callable[[Any, Any], Any], device_type: str | torch.device,
                  *, check_loss_scale: bool = True) -> Callable[[Any, Any], Any]:
        """Return ``step_fn`` run under this policy: the batch through `cast_batch`, the whole
        step inside `autocast`. This is what the runner compiles; ``"32"`` returns ``step_fn``.

        With ``"16-mixed"`` the wrapped step also checks (in Python, so once while tracing)
        that a training step replaced ``state.extras["loss_scale"]``, i.e. that it scales its
        loss; pass ``check_loss_scale=False`` for an evaluation step.

        Args:
            step_fn: ``step_fn(state, batch) -> (state, metrics)`` (or an evaluation function).
            device_type: the autocast device, ``"cpu"``, ``"cuda"``, ... (or a device).
            check_loss_scale: run the check above (only with ``"16-mixed"``).

        Raises:
            ValueError: (when the step runs) with ``"16-mixed"``, if the state has no loss
                scale or the step returned it unchanged.

        Example:
            >>> import torch
            >>> from functrain import precision as mp
            >>> def step(state, batch):
            ...     low = (batch @ batch.T).dtype == torch.bfloat16  # autocast is on
            ...     return state, {"dtype_ok": torch.tensor(low)}
            >>> step = mp.Policy.from_name("bf16-mixed").wrap_step(step, "cpu")
            >>> step({}, torch.ones(2, 2))[1]
            {'dtype_ok': tensor(True)}
        """
        if self.param_dtype is None and self.compute_dtype is None:
            return step_fn

        def step(state: Any, batch: Any) -> Any:
            with self.autocast(device_type):
                out = step_fn(state, self.cast_batch(batch))
            if (check_loss_scale and self.needs_loss_scale and isinstance(out, tuple)
                    and len(out) == 2):
                _check_scaled(state, out[0])
            return out

        return functools.wraps(step_fn)(step)


def _same_leaves(a: Any, b: Any) -> bool:
    la, lb = _tree.leaves(a), _tree.leaves(b)
    return len(la) == len(lb) and all(x is y for x, y in zip(la, lb))


def _init_on_meta(tx: Any, params: dict[str, torch.Tensor]) -> Any:
    meta = {k: torch.empty(v.shape, dtype=v.dtype, device="meta") for k, v in params.items()}
    return tx.init(meta)


def _check_scaled(state: Any, new_state: Any) -> None:
    old = getattr(state, "extras", {}).get("loss_scale")
    if not isinstance(old, DynamicLossScale):
        raise ValueError(
            "precision='16-mixed' needs a DynamicLossScale in state.extras['loss_scale'], "
            f"got {describe(old)}. HINT: state = policy.prepare_state(state).")
    if getattr(new_state, "extras", {}).get("loss_scale") is old:
        raise ValueError(
            "precision='16-mixed': the step returned state.extras['loss_scale'] unchanged, so "
            "its loss is not scaled and float16 gradients can underflow to zero. HINT: compute "
            "the gradients with functrain.precision.value_and_grad(loss_fn)(params, "
            "loss_scale=functrain.precision.get_loss_scale(state)) and apply them with "
            "functrain.precision.apply_gradients(state, grads).")


def _is_train_state(state: Any) -> bool:
    """Whether ``state`` follows `TrainState`'s protocol: ``params``, ``opt_state``, ``tx``.

    A user's fork of `TrainState` (any class with those fields) is treated like it.
    """
    return not isinstance(state, dict) and all(
        hasattr(state, n) for n in ("params", "opt_state", "tx"))


def _replace(state: Any, **changes: Any) -> Any:
    """``state`` with ``changes``, through its ``replace``/``_replace`` or a dataclass replace."""
    if callable(getattr(state, "replace", None)):
        return state.replace(**changes)
    if callable(getattr(state, "_replace", None)):
        return state._replace(**changes)
    if dataclasses.is_dataclass(state):
        return dataclasses.replace(state, **changes)
    raise TypeError(f"state: expected a state with replace(), _replace() or a dataclass, got "
                    f"{describe(state)}.")
