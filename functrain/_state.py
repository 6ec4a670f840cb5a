"""`TrainState`: the whole training state as one immutable pytree. Small enough to fork."""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import optree
import torch
from torch import nn

from . import tree as _tree
from ._bridge import call, split_module
from .optim import apply_updates

__all__ = ["TrainState"]


@dataclasses.dataclass(frozen=True, eq=False)
class TrainState:
    """Step counter, parameters, buffers, optimizer state and RNG key, as one pytree.

    Immutable: every update returns a new state (`replace`, `apply_gradients`). The tensors are
    the pytree's leaves; ``module`` and ``tx`` are static metadata (code, not data). Subclass it
    (as a ``dataclasses.dataclass(frozen=True, eq=False)``) to add fields, or keep small extras
    in ``extras``; subclasses are registered as pytrees automatically.

    Attributes:
        step: 0-d int64 tensor, the number of steps taken (fp16 steps skipped for
            non-finite gradients included; see `functrain.precision`).
        params: parameters by qualified name (from `functrain.split_module`).
        buffers: buffers by qualified name (BatchNorm statistics, ...).
        opt_state: the optimizer's state, ``tx.init(params)``.
        rng: a `functrain.random` key; derive per-step keys with
            ``functrain.random.fold_in(state.rng, state.step)``.
        extras: a dict for anything else the step carries (an EMA of params, a loss scale...).
        tx: the optimizer (a `functrain.optim.GradientTransformation`); static.
        module: the ``nn.Module`` whose code `apply` runs; static.
        stop_reason: on the state `functrain.fit` returns, why it returned early (e.g.
            ``"received SIGINT"``, ``"EarlyStopping: ..."``, a non-finite guard's message), or
            ``None`` when the run went to its end. Not part of the pytree (other states,
            e.g. from ``replace``, have ``None``).

    Example:
        >>> import torch, functrain as ft
        >>> model = torch.nn.Linear(3, 1)
        >>> state = ft.TrainState.create(model, ft.optim.sgd(0.1), seed=0)
        >>> def loss_fn(params, x, y):
        ...     out, _ = ft.call(model, params, state.buffers, x)
        ...     return ((out - y) ** 2).mean()
        >>> grads = torch.func.grad(loss_fn)(state.params, torch.ones(4, 3), torch.zeros(4, 1))
        >>> state = state.apply_gradients(grads)
        >>> int(state.step)
        1
    """

    step: torch.Tensor
    params: dict[str, torch.Tensor]
    buffers: dict[str, torch.Tensor]
    opt_state: Any
    rng: torch.Tensor
    extras: dict[str, Any] = dataclasses.field(default_factory=dict)
    tx: Any = dataclasses.field(default=None, metadata={"static": True})
    module: nn.Module | None = dataclasses.field(default=None, metadata={"static": True})
    # Not a field: set by `functrain.fit` on the state it returns.
    stop_reason: ClassVar[str | None] = None

    def __post_init__(self) -> None:
        _fields(type(self))  # fill the cache while not tracing

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        _register(cls)

    @classmethod
    def create(
        cls,
        module: nn.Module,
        optimizer: Any,
        *,
        seed: int = 0,
        device: torch.device | str | None = None,
        **extras: Any,
    ) -> TrainState:
        """Build the initial state of ``module`` trained by ``optimizer``.

        Args:
            module: the model; its current parameters and buffers are copied
                (`functrain.split_module`).
            optimizer: a `functrain.optim.GradientTransformation`, e.g. ``ft.optim.adamw(1e-3)``.
            seed: seeds ``rng`` (`functrain.random.key`).
            device: where to put the tensors; default: where the module's tensors are.
            **extras: initial entries of ``extras`` (or fields of a subclass).

        Parameters with ``requires_grad=False`` (frozen layers) go into ``buffers``, not
        ``params``: they are non-trainable state, out of the optimizer's reach (no update, no
        weight decay), and `functrain.call` still finds them there. To train them, set
        ``requires_grad_(True)`` before ``create``.

        Raises:
            TypeError: if ``optimizer`` does not have ``init`` and ``update``.

        Example:
            >>> import torch, functrain as ft
            >>> s = ft.TrainState.create(torch.nn.Linear(2, 2), ft.optim.adam(1e-3), seed=1)
            >>> s.step, sorted(s.params)
            (tensor(0), ['bias', 'weight'])
        """
        if not (callable(getattr(optimizer, "init", None))
                and callable(getattr(optimizer, "update", None))):
            raise TypeError(
                "optimizer: expected a functrain.optim.GradientTransformation (init, update), "
                f"got {type(optimizer).__name__}. HINT: e.g. functrain.optim.adamw(1e-3).")
        from . import random as _random

        params, buffers = split_module(module)
        frozen = {k for k, p in module.named_parameters() if not p.requires_grad}
        if frozen:  # non-trainable state: kept out of the optimizer's reach
            buffers = {**buffers, **{k: params.pop(k) for k in list(params) if k in frozen}}
        if device is not None:
            _check_backend(device)
            params, buffers = _tree.map(lambda x: x.to(device), (params, buffers))
        dev = next(iter(params.values())).device if params else torch.device(device or "cpu")
        fields = {f.name for f in dataclasses.fields(cls)}
        own = {k: v for k, v in extras.items() if k in fields}
        rest = {k: v for k, v in extras.items() if k not in fields}
        return cls(
            step=torch.zeros((), dtype=torch.int64, device=dev),
            params=params,
            buffers=buffers,
            opt_state=optimizer.init(params),
            rng=_random.key(seed, device=dev),
            extras=rest,
            tx=optimizer,
            module=module,
            **own,
        )

    def __repr__(self) -> str:
        """One line: 0-d fields by value, trees by tensor count, elements, dtype, bytes and
        device (`functrain._summary.state_repr`); never every tensor. (A subclass declared with
        ``@dataclass`` gets the dataclass repr unless it passes ``repr=False``.)"""
        from ._summary import state_repr

        return state_repr(self)

    def replace(self, **changes: Any) -> TrainState:
        """Return a copy with some fields replaced (``dataclasses.replace``).

        Example:
            >>> import torch, functrain as ft
            >>> s = ft.TrainState.create(torch.nn.Linear(2, 2), ft.optim.sgd(0.1))
            >>> int(s.replace(step=s.step + 5).step)
            5
        """
        return dataclasses.replace(self, **changes)

    def apply_gradients(self, grads: dict[str, torch.Tensor], **changes: Any) -> TrainState:
        """Run the optimizer on ``grads``, add 1 to ``step``, and replace any other fields.

        Args:
            grads: gradients with the structure, shapes and dtypes of ``params``.
            **changes: other fields to replace at the same time (e.g. ``buffers=new_buffers``).

        Raises:
            functrain.tree.TreeMismatchError: if ``grads`` or ``opt_state`` does not match
                ``params``; the message names the first offending leaf path. (Eagerly, these
                checks run on an optimizer's first use, and afterwards whenever its update
                raises, which functrain's optimizers do for grads that do not match the
                params' structure, shapes or dtypes.)

        Example:
            >>> import torch, functrain as ft
            >>> s = ft.TrainState.create(torch.nn.Linear(2, 1), ft.optim.sgd(1.0))
            >>> g = ft.tree.map(torch.ones_like, s.params)
            >>> s2 = s.apply_gradients(g)
            >>> torch.equal(s2.params["bias"], s.params["bias"] - 1)
            True
        """
        if self.tx is None:
            raise ValueError("apply_gradients: this state has no optimizer (tx is None). "
                             "HINT: build it with TrainState.create(module, optimizer).")
        if torch.compiler.is_compiling():
            params, opt_state = self._update(grads)
        else:
            if _first_use(self.tx):
                _check_gradients(self, grads)
            try:
                params, opt_state = self._update(grads)
            except Exception:
                try:
                    _check_gradients(self, grads)
                except _tree.TreeMismatchError as mismatch:  # the cause: name its leaf path
                    raise mismatch from None
                raise
        return self.replace(step=self.step + 1, params=params, opt_state=opt_state, **changes)

    def _update(self, grads: Any) -> tuple[Any, Any]:
        apply = getattr(self.tx, "apply_to_params", None)
        if apply is not None:  # a sharded optimizer (functrain.distributed.shard_state)
            return apply(grads, self.opt_state, self.params)
        updates, opt_state = self.tx.update(grads, self.opt_state, self.params)
        return apply_updates(self.params, updates), opt_state

    def apply(self, *args: Any, rng: torch.Tensor | None = None, train: bool | None = None,
              **kwargs: Any) -> tuple[Any, dict[str, torch.Tensor]]:
        """Run ``module`` with this state's params and buffers: `functrain.call` in short.

        Returns ``(output, new_buffers)``; the state itself is unchanged.

        Example:
            >>> import torch, functrain as ft
            >>> s = ft.TrainState.create(torch.nn.Linear(2, 1), ft.optim.sgd(0.1))
            >>> out, _ = s.apply(torch.ones(5, 2))
            >>> out.shape
            torch.Size([5, 1])
        """
        if self.module is None:
            raise ValueError("apply: this state has no module. "
                             "HINT: build it with TrainState.create(module, optimizer).")
        return call(self.module, self.params, self.buffers, *args, rng=rng, train=train,
                    **kwargs)


_OPT_STATE_SPECS: dict[Any, Any] = {}
# Optimizers whose first apply_gradients ran the eager checks. After that the checks run only
# when the update raises (functrain's optimizers check their inputs' trees), to name the
# offending leaf: up front they cost ~50 us of an eager step on a small CNN, as much as
# computing a treespec key to cache them by, a tenth of the whole Adam step.
_CHECKED: dict[Any, bool] = {}


def _first_use(tx: Any) -> bool:
    try:
        if tx in _CHECKED:
            return False
        if len(_CHECKED) > 1024:
            _CHECKED.clear()
        _CHECKED[tx] = True
    except TypeError:  # an unhashable optimizer: check every time
        pass
    return True


def _check_gradients(state: TrainState, grads: Any) -> None:
    """`apply_gradients`' eager checks: ``grads`` against ``params`` (structure, shapes, dtypes)
    and ``opt_state`` against ``tx.init(params)``; raise naming the first offending leaf."""
    _tree.assert_trees_match(state.params, grads, "grads")
    _check_opt_state(state)


def _check_opt_state(state: TrainState) -> None:
    """Check that ``opt_state`` is what ``tx.init(params)`` would build (shapes and dtypes).

    The reference is built once per (optimizer, params layout) on the meta device, so the check
    costs a dict lookup per step in eager mode and nothing inside a compiled step.
    """
    layout = tuple((k, tuple(v.shape), v.dtype) for k, v in state.params.items())
    # Keyed by the optimizer itself, not id(): an id can be reused by a later optimizer.
    # (An unhashable optimizer object gets no cache: its reference is rebuilt each time.)
    try:
        key: Any = (state.tx, layout)
        ref = _OPT_STATE_SPECS.get(key)
    except TypeError:
        key, ref = None, None
    if ref is None:
        from ._compat import real_tensors

        with real_tensors():  # real meta tensors, also during the runner's fake run
            meta = {k: torch.empty(v.shape, dtype=v.dtype, device="meta")
                    for k, v in state.params.items()}
            ref = state.tx.init(meta)
        if key is not None:
            _OPT_STATE_SPECS[key] = ref
    try:
        _tree.assert_trees_match(ref, state.opt_state, "state.opt_state")
    except _tree.TreeMismatchError as e:
        raise _tree.TreeMismatchError(
            f"{e} HINT: the optimizer state does not match the params; was it built with "
            "tx.init(params) for these params?") from None


def _fields(c: type) -> tuple[list[str], list[str]]:
    """(data fields, static fields) of a TrainState class. Kept on the class itself: dynamo
    cannot trace ``dataclasses.fields``, but it reads a class attribute (filled by
    ``__post_init__`` while not tracing)."""
    entry = getattr(c, "_ft_all_fields", None)
    if entry is None or entry[0] is not c:
        fs = dataclasses.fields(c)
        entry = (c, [f.name for f in fs if not f.metadata.get("static")],
                 [f.name for f in fs if f.metadata.get("static")])
        type.__setattr__(c, "_ft_all_fields", entry)
        _tree.register_fields(c, entry[1])
    return entry[1], entry[2]


def _register(cls: type) -> None:
    # Fields are read when flattening, not here: ``__init_subclass__`` runs before the
    # dataclass decorator has added a subclass's own fields.
    fields = _fields
    def flatten(s: Any) -> tuple[list[Any], tuple[Any, ...], list[str]]:
        names, static = fields(type(s))
        return ([getattr(s, n) for n in names], tuple(getattr(s, n) for n in static), names)

    def unflatten(meta: tuple[Any, ...], children: Any) -> Any:
        names, static = fields(cls)
        return cls(**dict(zip(names, children)), **dict(zip(static, meta)))

    optree.register_pytree_node(cls, flatten, unflatten,
                                path_entry_type=optree.GetAttrEntry,
                                namespace=_tree.NAMESPACE)


_register(TrainState)


def _check_backend(device: Any) -> None:
    """A clear error for ``device`` on a backend this process cannot use (e.g. CUDA here)."""
    try:
        kind = torch.device(device).type
    except (RuntimeError, TypeError):
        raise ValueError(f"device: expected a torch device such as 'cpu' or 'cuda', got "
                         f"{device!r}.") from None
    if kind == "mps":
        available = torch.backends.mps.is_available()
    elif kind in ("cpu", "meta", "xla"):
        available = True
    else:
        available = bool(getattr(getattr(torch, kind, None), "is_available", lambda: False)())
    if not available:
        raise ValueError(f"device={device!r}: the {kind} backend is not available here (torch "
                         f"{torch.__version__}). HINT: create the state on 'cpu' (or leave "
                         "device=None); fit moves it to its device.")
