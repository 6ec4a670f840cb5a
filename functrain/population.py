"""Populations: train N models as one, in one compiled, vmapped step over a stacked state.

A pure step over an explicit state is a function we can transform. `vmap` turns a step written
for one model into a step over a *population*: every leaf of the state (params, optimizer
state, step counter, RNG key, and hyperparameters injected with
`functrain.optim.inject_hyperparams`) gets a leading member axis, and the step runs once per
member inside one graph. A seed sweep, an ensemble, or a learning-rate sweep then compiles
once and runs as one program.

Example:
    >>> import torch, functrain as ft
    >>> from torch import nn
    >>> def make():
    ...     return nn.Linear(3, 1)
    >>> tx = ft.optim.inject_hyperparams(ft.optim.sgd)(learning_rate=0.1)
    >>> pop = ft.population.create(make, tx, seeds=[0, 1, 2],
    ...                            hparams={"learning_rate": [0.1, 0.05, 0.01]})
    >>> def step(state, batch):
    ...     x, y = batch
    ...     def loss_fn(params):
    ...         out, _ = ft.call(state.module, params, state.buffers, x)
    ...         return ((out - y) ** 2).mean()
    ...     grads, loss = torch.func.grad_and_value(loss_fn)(state.params)
    ...     return state.apply_gradients(grads), {"loss": loss}
    >>> pop_step = ft.population.vmap(step)
    >>> pop, metrics = pop_step(pop, (torch.ones(4, 3), torch.zeros(4, 1)))
    >>> pop.size, sorted(metrics)
    (3, ['loss/0', 'loss/1', 'loss/2', 'loss/best', 'loss/mean'])
    >>> ft.population.select(pop, 2).params["weight"].shape
    torch.Size([1, 3])
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import optree
import torch
from torch import nn

from . import metrics as _metrics
from . import tree as _tree
from ._errors import check_choice, check_int, describe
from ._state import TrainState
from .callbacks import Callback, Loop

__all__ = [
    "Best",
    "EarlyStopping",
    "MeanOver",
    "PopulationState",
    "create",
    "freeze",
    "select",
    "stack",
    "vmap",
    "vmap_eval",
]


# -- the stacked state ------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, eq=False)
class PopulationState:
    """N training states stacked along a leading member axis, plus which members still train.

    Attributes:
        step: 0-d int64 tensor, the population steps taken (the runner's and `fit`'s step
            count; a frozen member's own ``members.step`` stops advancing).
        members: a `functrain.TrainState` whose every tensor has a leading axis of size N
            (``members.params["w"][i]`` is member i's ``w``); ``tx`` and ``module`` are shared.
        active: bool tensor of shape (N,): members still training. A member set inactive
            (`freeze`) keeps its params, optimizer state and step unchanged from then on; the
            population keeps its shape, so the compiled step is reused as it is.

    Example:
        >>> import torch, functrain as ft
        >>> pop = ft.population.create(torch.nn.Linear(2, 1), ft.optim.sgd(0.1), seeds=[0, 1])
        >>> pop.size, pop.members.params["weight"].shape, pop.active
        (2, torch.Size([2, 1, 2]), tensor([True, True]))
    """

    step: torch.Tensor
    members: TrainState
    active: torch.Tensor

    def __post_init__(self) -> None:
        if not torch.compiler.is_compiling():
            _tree.register_fields(PopulationState, _FIELDS)

    @property
    def size(self) -> int:
        """The number of members, N."""
        return self.active.shape[0]

    def replace(self, **changes: Any) -> PopulationState:
        """Return a copy with some fields replaced (``dataclasses.replace``)."""
        return dataclasses.replace(self, **changes)


_FIELDS = ("step", "members", "active")
optree.register_pytree_node(
    PopulationState,
    lambda s: ([s.step, s.members, s.active], None, list(_FIELDS)),
    lambda _, children: PopulationState(*children),
    path_entry_type=optree.GetAttrEntry,
    namespace=_tree.NAMESPACE,
)


def _stack_leaves(trees: Sequence[Any], name: str) -> Any:
    first = trees[0]
    for i, t in enumerate(trees[1:], 1):
        try:
            _tree.assert_trees_match(first, t, f"{name}[{i}]")
        except _tree.TreeMismatchError as e:
            raise _tree.TreeMismatchError(
                f"{e} HINT: every member must have the same model and optimizer; only values "
                "may differ.") from None
    return _tree.map(lambda *xs: torch.stack(xs), *trees)


def stack(states: Sequence[TrainState]) -> PopulationState:
    """Stack ordinary `functrain.TrainState` objects into a population.

    The states must share their tree, shapes, dtypes and static fields (``tx`` and
    ``module`` are taken from the first); values may differ (seeds, init, hyperparameters).

    Args:
        states: one or more ``TrainState`` objects (the members, in order).

    Returns:
        A `PopulationState` with every member active and ``step`` 0.

    Raises:
        TypeError: if ``states`` is empty or holds something else than TrainStates.
        functrain.tree.TreeMismatchError: if two members differ in structure, shape or
            dtype; names the first leaf path.

    Example:
        >>> import torch, functrain as ft
        >>> tx = ft.optim.sgd(0.1)
        >>> a = ft.TrainState.create(torch.nn.Linear(2, 1), tx, seed=0)
        >>> b = ft.TrainState.create(torch.nn.Linear(2, 1), tx, seed=1)
        >>> ft.population.stack([a, b]).members.rng.shape
        torch.Size([2, 2])
    """
    states = list(states) if not isinstance(states, TrainState) else states
    if not isinstance(states, list) or not states:
        raise TypeError(f"states: expected a non-empty sequence of TrainState, got "
                        f"{describe(states)}.")
    for i, s in enumerate(states):
        if not isinstance(s, TrainState):
            raise TypeError(f"states[{i}]: expected a functrain.TrainState, got {describe(s)}.")
        if s.tx is not states[0].tx:
            raise ValueError(
                f"states[{i}].tx: expected the optimizer object of states[0] (members share "
                "one optimizer), got another one. HINT: build every member with the same "
                "optimizer; sweep hyperparameters with functrain.optim.inject_hyperparams.")
    module = states[0].module
    members = _stack_leaves([s.replace(module=module) for s in states], "states")
    dev = members.step.device
    return PopulationState(step=torch.zeros((), dtype=torch.int64, device=dev),
                           members=members,
                           active=torch.ones(len(states), dtype=torch.bool, device=dev))


def _hyperparams_of(opt_state: Any) -> dict[str, torch.Tensor] | None:
    hp = getattr(opt_state, "hyperparams", None)
    return hp if isinstance(hp, dict) else None


def create(
    model: nn.Module | Callable[[], nn.Module],
    optimizer: Any,
    *,
    seeds: Sequence[int] | int,
    hparams: Mapping[str, Sequence[float]] | None = None,
    device: torch.device | str | None = None,
    **extras: Any,
) -> PopulationState:
    """Build a population: one `functrain.TrainState` per seed, stacked.

    Member ``i`` is exactly the state you would build for it alone::

        torch.manual_seed(seeds[i])          # only when model is a factory
        module = model() if callable else model
        state = TrainState.create(module, optimizer, seed=seeds[i], **extras)
        # and, for each name in hparams:
        state.opt_state.hyperparams[name] = hparams[name][i]

    so `select` of the initial population gives the state to train member i alone with.

    Args:
        model: an ``nn.Module`` (every member starts from its weights; members then differ by
            their RNG keys and hyperparameters), or a zero-argument factory returning a new
            module, called under ``torch.manual_seed(seed)`` for each member (so each seed
            has its own initialisation; the global RNG state is restored afterwards).
        optimizer: a `functrain.optim.GradientTransformation` shared by all members. To sweep
            hyperparameters, build it with `functrain.optim.inject_hyperparams`, e.g.
            ``inject_hyperparams(adamw)(learning_rate=1e-3)``.
        seeds: the members' seeds (their number is N), or an int N for seeds ``0..N-1``.
        hparams: per-member values of hyperparameters the optimizer's state holds,
            ``{"learning_rate": [1e-3, 3e-3, ...]}`` (N values each).
        device: where to put the tensors (see `functrain.TrainState.create`).
        **extras: initial ``extras`` of every member (see `functrain.TrainState.create`).

    Returns:
        A `PopulationState`.

    Raises:
        TypeError / ValueError: for bad arguments, naming the argument; a hyperparameter the
            optimizer state does not hold raises with a HINT to use ``inject_hyperparams``.

    Example:
        >>> import torch, functrain as ft
        >>> tx = ft.optim.inject_hyperparams(ft.optim.adam)(learning_rate=1e-3)
        >>> pop = ft.population.create(lambda: torch.nn.Linear(2, 1), tx, seeds=3,
        ...                            hparams={"learning_rate": [1e-3, 1e-2, 1e-1]})
        >>> pop.members.opt_state.hyperparams["learning_rate"]
        tensor([0.0010, 0.0100, 0.1000])
    """
    if isinstance(seeds, int) and not isinstance(seeds, bool):
        check_int("seeds", seeds, minimum=1)
        seeds = list(range(seeds))
    if isinstance(seeds, (str, bytes)) or not isinstance(seeds, Sequence) or not seeds:
        raise TypeError(f"seeds: expected a positive int or a non-empty sequence of ints, got "
                        f"{describe(seeds)}.")
    for i, s in enumerate(seeds):
        check_int(f"seeds[{i}]", s)
    n = len(seeds)
    if not isinstance(model, nn.Module) and not callable(model):
        raise TypeError(f"model: expected an nn.Module or a function returning one, got "
                        f"{describe(model)}.")
    hparams = dict(hparams or {})
    for name, values in hparams.items():
        if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
            raise TypeError(f"hparams[{name!r}]: expected a sequence of {n} numbers (one per "
                            f"member), got {describe(values)}.")
        if len(values) != n:
            raise ValueError(f"hparams[{name!r}]: expected {n} values (one per seed), got "
                             f"{len(values)}.")
    states = []
    module0 = None
    for i, seed in enumerate(seeds):
        if isinstance(model, nn.Module):
            module = model
        else:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                module = model()
            if not isinstance(module, nn.Module):
                raise TypeError(f"model: expected the factory to return an nn.Module, got "
                                f"{describe(module)}.")
        module0 = module0 or module
        state = TrainState.create(module, optimizer, seed=seed, device=device, **extras)
        state = state.replace(module=module0)  # shared code: member 0's module
        if hparams:
            state = _set_hparams(state, {k: v[i] for k, v in hparams.items()})
        states.append(state)
    return stack(states)


def _set_hparams(state: TrainState, values: dict[str, Any]) -> TrainState:
    stored = _hyperparams_of(state.opt_state)
    if stored is None:
        raise TypeError(
            f"hparams: the optimizer's state holds no hyperparameters (opt_state is "
            f"{type(state.opt_state).__name__}). HINT: build the optimizer with "
            "functrain.optim.inject_hyperparams, e.g. "
            "ft.optim.inject_hyperparams(ft.optim.adamw)(learning_rate=1e-3).")
    new = dict(stored)
    for name, value in values.items():
        if name not in stored:
            raise ValueError(f"hparams: expected names among {sorted(stored)} (the optimizer's "
                             f"injected hyperparameters), got {name!r}.")
        new[name] = torch.as_tensor(value, dtype=stored[name].dtype,
                                    device=stored[name].device).clone()
    return state.replace(opt_state=state.opt_state._replace(hyperparams=new))


def select(state: PopulationState, i: int) -> TrainState:
    """Member ``i`` of a population, as an ordinary `functrain.TrainState` (copied).

    Args:
        state: a `PopulationState`.
        i: the member's index, ``0 <= i < state.size`` (negative indices count from the end).

    Returns:
        A ``TrainState`` with member i's tensors (fresh copies, so it stays valid when the
        population is donated to the runner) and the shared ``tx`` and ``module``.

    Example:
        >>> import torch, functrain as ft
        >>> pop = ft.population.create(torch.nn.Linear(2, 1), ft.optim.sgd(0.1), seeds=[7, 8])
        >>> torch.equal(ft.population.select(pop, 1).rng, ft.random.key(8))
        True
    """
    if not isinstance(state, PopulationState):
        raise TypeError(f"state: expected a functrain.population.PopulationState, got "
                        f"{describe(state)}.")
    i = _index("i", i, state.size)
    return _tree.map(lambda x: x[i].clone(), state.members)


def _index(name: str, i: Any, n: int) -> int:
    check_int(name, i)
    if not -n <= i < n:
        raise ValueError(f"{name}: expected a member index in [{-n}, {n - 1}] (the population "
                         f"has {n} members), got {i}.")
    return i % n


def freeze(state: PopulationState, members: int | Sequence[int]) -> PopulationState:
    """Stop training some members: their params and optimizer state stay as they are.

    The population keeps its shape, so a compiled step runs on without recompiling; frozen
    members are still computed (their results are discarded) and still reported.

    Args:
        state: a `PopulationState`.
        members: an index or a list of indices.

    Returns:
        A new `PopulationState` sharing ``state``'s tensors except ``active``.

    Example:
        >>> import torch, functrain as ft
        >>> pop = ft.population.create(torch.nn.Linear(2, 1), ft.optim.sgd(0.1), seeds=3)
        >>> ft.population.freeze(pop, [0, 2]).active
        tensor([False,  True, False])
    """
    if not isinstance(state, PopulationState):
        raise TypeError(f"state: expected a functrain.population.PopulationState, got "
                        f"{describe(state)}.")
    idx = [members] if isinstance(members, int) else list(members)
    idx = [_index(f"members[{j}]", i, state.size) for j, i in enumerate(idx)]
    active = state.active.clone()
    active[idx] = False
    return state.replace(active=active)


# -- metrics across members -------------------------------------------------------------------


def _member(m: _metrics.Metric, i: int) -> _metrics.Metric:
    return _tree.map(lambda x: x[i], m)


def _over_members(fn: Callable[..., Any], *metrics: _metrics.Metric) -> Any:
    """``fn(*member_metrics)`` for every member at once, by torch.func.vmap over the fields'
    leading member axis: one op per field whatever N (a Python loop over members made the
    graph, and its compile time, grow with N). Returns the stacked leaves of ``fn``'s result
    (its fields' leaves for a metric)."""
    template = metrics[0]

    def one(*flats: list[torch.Tensor]) -> Any:
        out = fn(*(_rebuild(template, f) for f in flats))
        return _tree.leaves(out) if isinstance(out, _metrics.Metric) else out

    return torch.func.vmap(one)(*(_tree.leaves(m) for m in metrics))


def _computed(members: _metrics.Metric) -> torch.Tensor:
    return _over_members(lambda m: m.compute(), members)


@dataclasses.dataclass(frozen=True, eq=False)
class MeanOver(_metrics.Metric):
    """The mean over members of a per-member metric (each member's own window value).

    Attributes:
        members: a metric whose fields have a leading member axis.

    Example:
        >>> import torch, functrain as ft
        >>> m = MeanOver(ft.metrics.Mean(torch.tensor([2.0, 6.0]), torch.tensor([1.0, 2.0])))
        >>> m.compute()   # (2/1 + 6/2) / 2
        tensor(2.5000)
    """

    members: _metrics.Metric

    @classmethod
    def empty(cls, members: _metrics.Metric) -> MeanOver:
        """Zeros shaped like ``members``."""
        return cls(_tree.map(torch.zeros_like, members))

    def merge(self, other: MeanOver) -> MeanOver:
        """Merge member by member."""
        return type(self)(_merge_members(self.members, other.members))

    def compute(self) -> torch.Tensor:
        """The mean of the members' computed values."""
        return _computed(self.members).mean()


@dataclasses.dataclass(frozen=True, eq=False)
class Best(_metrics.Metric):
    """The best member's value of a per-member metric: the lowest, or the highest for names
    that read as "higher is better" (accuracy, f1, precision, recall, auc, score).

    Attributes:
        members: a metric whose fields have a leading member axis.
        higher: 0-d bool tensor, True when higher values are better.

    Example:
        >>> import torch, functrain as ft
        >>> b = Best(ft.metrics.Mean(torch.tensor([2.0, 6.0]), torch.tensor([1.0, 2.0])),
        ...          torch.tensor(False))
        >>> b.compute()
        tensor(2.)
    """

    members: _metrics.Metric
    higher: torch.Tensor

    @classmethod
    def empty(cls, members: _metrics.Metric) -> Best:
        """Zeros shaped like ``members``."""
        return cls(_tree.map(torch.zeros_like, members), torch.zeros((), dtype=torch.bool))

    def merge(self, other: Best) -> Best:
        """Merge member by member (``higher`` comes from the newer value)."""
        return type(self)(_merge_members(self.members, other.members), other.higher)

    def compute(self) -> torch.Tensor:
        """The lowest (or highest) of the members' computed values, NaNs ignored."""
        v = _computed(self.members).to(torch.float32)
        lo = torch.where(torch.isnan(v), math.inf, v).min()
        hi = torch.where(torch.isnan(v), -math.inf, v).max()
        return torch.where(self.higher, hi, lo)


def _merge_members(a: _metrics.Metric, b: _metrics.Metric) -> _metrics.Metric:
    n, m = _tree.leaves(a)[0].shape[0], _tree.leaves(b)[0].shape[0]
    if n != m:  # shapes are static: checked once, while tracing
        raise ValueError(
            f"population metrics: expected {n} members (as in the metric window), got {m}. "
            "HINT: a population step's metric window is sized for the first population it ran "
            "on; build a new step with functrain.population.vmap(step) for another size.")
    return _rebuild(a, _over_members(lambda x, y: x.merge(y), a, b))


def _higher_is_better(name: str) -> bool:
    low = name.lower()
    return any(w in low for w in ("acc", "f1", "precision", "recall", "auc", "score"))


REDUCTIONS = ("mean", "best")


def _expand(stacked: dict[str, _metrics.Metric], n: int, per_member: bool,
            reduce: tuple[str, ...]) -> dict[str, _metrics.Metric]:
    out: dict[str, _metrics.Metric] = {}
    for name, m in stacked.items():
        if per_member:
            for i in range(n):
                out[f"{name}/{i}"] = _member(m, i)
        if "mean" in reduce:
            out[f"{name}/mean"] = MeanOver(m)
        if "best" in reduce:
            dev = _tree.leaves(m)[0].device
            out[f"{name}/best"] = Best(m, torch.full((), _higher_is_better(name),
                                                     dtype=torch.bool, device=dev))
    return out


# -- the vmapped step -------------------------------------------------------------------------


class _MetricLayout:
    """How the member step's metrics flatten: names, types and field names (set eagerly, on
    the runner's dry run or an eager call, and only read while compiling)."""

    def __init__(self) -> None:
        self.entries: tuple[tuple[str, type, tuple[str, ...]], ...] | None = None

    def flatten(self, metrics: Any) -> tuple[tuple[torch.Tensor, ...], ...]:
        ms = _metrics.to_metrics(metrics, "step_fn(state, batch)[1]")
        names = sorted(ms)
        if not torch.compiler.is_compiling():
            self.entries = tuple(
                (k, type(ms[k]), tuple(f.name for f in dataclasses.fields(ms[k])))
                for k in names)
        if self.entries is None:
            raise RuntimeError(
                "functrain.population: the step's metric layout is unknown inside a compiled "
                "graph. HINT: run the population step through functrain.fit or "
                "functrain.compile_step (which run it once eagerly first), or call it once "
                "eagerly before compiling it yourself.")
        return tuple(tuple(getattr(ms[k], f) for f in fields)
                     for k, _, fields in self.entries)

    def unflatten(self, flat: tuple[tuple[torch.Tensor, ...], ...]) -> dict[str, Any]:
        entries = self.entries or ()
        return {k: t(**dict(zip(fields, values)))
                for (k, t, fields), values in zip(entries, flat)}


def _check_population(state: Any, where: str) -> None:
    if not isinstance(state, PopulationState):
        hint = (" HINT: build it with functrain.population.create(...) or "
                "functrain.population.stack([...])." if isinstance(state, TrainState) else "")
        raise TypeError(f"{where}: expected a functrain.population.PopulationState, got "
                        f"{describe(state)}.{hint}")


def _vmapped(fn: Callable[[Any, Any], tuple[Any, Any]], members: TrainState, batch: Any,
             in_batch: int | None, layout: _MetricLayout,
             randomness: str) -> tuple[Any, Any]:
    """Run ``fn(member, batch)`` for every member with torch.func.vmap; return the stacked
    new members (or None) and the stacked metrics as tuples of field tensors."""
    template = members
    leaves = _tree.leaves(members)

    def one(member_leaves: list[torch.Tensor], b: Any) -> tuple[Any, Any]:
        it = iter(member_leaves)
        member = _tree.map(lambda _: next(it), template)
        new_member, metrics = fn(member, b)
        new_leaves = [] if new_member is None else _tree.leaves(new_member)
        return new_leaves, layout.flatten(metrics)

    return torch.func.vmap(one, in_dims=(0, in_batch), randomness=randomness)(leaves, batch)


def _rebuild(template: Any, flat: list[torch.Tensor]) -> Any:
    it = iter(flat)
    return _tree.map(lambda _: next(it), template)


def vmap(
    step_fn: Callable[[TrainState, Any], tuple[TrainState, Any]],
    *,
    batch: str = "shared",
    per_member: bool = True,
    reduce: Sequence[str] = REDUCTIONS,
) -> Callable[[PopulationState, Any], tuple[PopulationState, dict[str, Any]]]:
    """Turn a step for one model into a step for a population (``torch.func.vmap`` inside).

    ``step_fn(state, batch) -> (state, metrics)`` is the ordinary step, written for one
    `functrain.TrainState`. The returned ``pop_step(pop, batch) -> (pop, metrics)`` runs it
    for every member of a `PopulationState` in one vmapped call, so `functrain.fit` and
    `functrain.compile_step` compile the whole population as one graph.

    Inside ``step_fn``, ``state.module`` and ``state.tx`` are the shared ones, and every
    tensor (params, optimizer state with its injected hyperparameters, ``step``, ``rng``) is
    the member's own. Keyed randomness (``ft.call(..., rng=key)``) draws each member's values
    from its own key, exactly as when it trains alone. Global randomness (``torch.rand`` with
    no key) is refused, since members would silently share or not share draws.

    Metrics: each metric ``m`` of the step becomes ``m/0`` ... ``m/{N-1}`` (each member's own,
    when ``per_member``), ``m/mean`` (the mean over members of their window values) and
    ``m/best`` (the lowest, or for accuracy-like names the highest, member's value), so `fit`
    logs ``train/loss/3``, ``train/loss/mean``, ``train/loss/best``.

    Members frozen with `freeze` (or by `EarlyStopping`) keep their state: their new values
    are computed and discarded with ``torch.where``, so nothing recompiles.

    Args:
        step_fn: the one-model step.
        batch: ``"shared"``: every member sees the same batch; ``"split"``: every tensor of
            the batch has a leading member axis of size N and member i gets slice i (e.g.
            different data orders per member).
        per_member: log each member's metrics (turn off for large N to keep logs short).
        reduce: which summaries across members to log, among ``"mean"`` and ``"best"``.

    Returns:
        ``pop_step(pop, batch) -> (pop, metrics)``.

    Raises:
        TypeError / ValueError: for bad arguments (now), or, when called, a state that is
            not a `PopulationState`.

    Example:
        >>> import torch, functrain as ft
        >>> model = torch.nn.Linear(2, 1)
        >>> def step(state, batch):
        ...     def loss_fn(p):
        ...         return ft.call(model, p, state.buffers, batch)[0].pow(2).mean()
        ...     grads, loss = torch.func.grad_and_value(loss_fn)(state.params)
        ...     return state.apply_gradients(grads), {"loss": loss}
        >>> pop = ft.population.create(model, ft.optim.sgd(0.1), seeds=4)
        >>> pop, m = ft.population.vmap(step, per_member=False)(pop, torch.ones(8, 2))
        >>> sorted(m), pop.members.step
        (['loss/best', 'loss/mean'], tensor([1, 1, 1, 1]))
    """
    if not callable(step_fn):
        raise TypeError(f"step_fn: expected a callable step_fn(state, batch) -> (state, "
                        f"metrics), got {describe(step_fn)}.")
    check_choice("batch", batch, ("shared", "split"))
    reduce = _check_reduce(reduce)
    layout = _MetricLayout()
    in_batch = None if batch == "shared" else 0

    def pop_step(state: PopulationState, batch_: Any) -> tuple[PopulationState, dict]:
        if not torch.compiler.is_compiling():
            _check_population(state, "pop_step(state, batch): state")
        members = state.members
        new_leaves, flat_metrics = _vmapped(step_fn, members, batch_, in_batch, layout,
                                            "error")
        old_leaves = _tree.leaves(members)
        keep = state.active
        mixed = [torch.where(keep.reshape((-1,) + (1,) * (o.dim() - 1)), n, o)
                 for o, n in zip(old_leaves, new_leaves)]
        new_state = state.replace(step=state.step + 1, members=_rebuild(members, mixed))
        stacked = layout.unflatten(flat_metrics)
        return new_state, _expand(stacked, keep.shape[0], per_member, reduce)

    pop_step.__doc__ = f"Population version of {getattr(step_fn, '__name__', 'step_fn')}."
    return pop_step


def vmap_eval(
    eval_fn: Callable[[TrainState, Any], Any],
    *,
    batch: str = "shared",
    per_member: bool = True,
    reduce: Sequence[str] = REDUCTIONS,
) -> Callable[[PopulationState, Any], dict[str, Any]]:
    """The evaluation counterpart of `vmap`: ``eval_fn(state, batch) -> metrics`` for one model
    becomes ``pop_eval(pop, batch) -> metrics`` over every member, named as in `vmap`
    (``loss/3``, ``loss/mean``, ``loss/best``; `fit` prefixes them with ``val/``).

    Args:
        eval_fn: the one-model evaluation function.
        batch: ``"shared"`` or ``"split"`` (see `vmap`).
        per_member: report each member's metrics.
        reduce: summaries across members, among ``"mean"`` and ``"best"``.

    Returns:
        ``pop_eval(pop, batch) -> metrics``; pass it to `functrain.fit` as ``eval_fn`` or to
        `functrain.evaluate`.

    Example:
        >>> import torch, functrain as ft
        >>> model = torch.nn.Linear(2, 1)
        >>> def eval_fn(state, x):
        ...     return {"mse": state.apply(x)[0].pow(2).mean()}
        >>> pop = ft.population.create(model, ft.optim.sgd(0.1), seeds=2)
        >>> sorted(ft.population.vmap_eval(eval_fn)(pop, torch.ones(3, 2)))
        ['mse/0', 'mse/1', 'mse/best', 'mse/mean']
    """
    if not callable(eval_fn):
        raise TypeError(f"eval_fn: expected a callable eval_fn(state, batch) -> metrics, got "
                        f"{describe(eval_fn)}.")
    check_choice("batch", batch, ("shared", "split"))
    reduce = _check_reduce(reduce)
    layout = _MetricLayout()
    in_batch = None if batch == "shared" else 0

    def as_step(member: TrainState, b: Any) -> tuple[None, Any]:
        return None, eval_fn(member, b)

    def pop_eval(state: PopulationState, batch_: Any) -> dict[str, Any]:
        if not torch.compiler.is_compiling():
            _check_population(state, "pop_eval(state, batch): state")
        _, flat = _vmapped(as_step, state.members, batch_, in_batch, layout, "error")
        return _expand(layout.unflatten(flat), state.active.shape[0], per_member, reduce)

    return pop_eval


def _check_reduce(reduce: Sequence[str]) -> tuple[str, ...]:
    if isinstance(reduce, str):
        reduce = (reduce,)
    reduce = tuple(reduce)
    for i, r in enumerate(reduce):
        check_choice(f"reduce[{i}]", r, REDUCTIONS)
    return reduce


# -- per-member early stopping ----------------------------------------------------------------


class EarlyStopping(Callback):
    """Freeze each member of a population when its own monitored metric stops improving.

    Watches ``f"{monitor}/{i}"`` for every member i (as logged by `vmap` / `vmap_eval`) at
    each evaluation (``val/...``) or training log window (``train/...``). A member whose value
    has not improved by more than ``min_delta`` for ``patience`` checks is frozen with
    `freeze`: it keeps its state and the population keeps training, with no recompile. When
    every member is frozen, the run stops. Its counters are saved in checkpoints.

    Args:
        monitor: the metric's name without the member suffix, e.g. ``"val/loss"``.
        patience: checks without improvement before a member is frozen.
        mode: ``"min"`` or ``"max"``; ``None``: ``"max"`` for accuracy-like names.
        min_delta: the smallest change that counts as an improvement.

    Example:
        >>> cb = EarlyStopping("val/loss", patience=2)
        >>> cb.mode
        'min'
    """

    def __init__(self, monitor: str, *, patience: int = 3, mode: str | None = None,
                 min_delta: float = 0.0) -> None:
        if not isinstance(monitor, str):
            raise TypeError(f"monitor: expected a metric name (str), got {describe(monitor)}.")
        check_int("patience", patience, minimum=1)
        if mode is None:
            mode = "max" if _higher_is_better(monitor) else "min"
        check_choice("mode", mode, ("min", "max"))
        self.monitor, self.patience, self.mode = monitor, patience, mode
        self.min_delta = float(min_delta)
        self.best: list[float | None] = []
        self.wait: list[int] = []
        self.frozen: list[int] = []

    @property
    def state_key(self) -> str:
        """Unique per monitored metric."""
        return f"population.EarlyStopping[{self.monitor}]"

    def state_dict(self) -> dict[str, Any]:
        """The per-member bests, waits and frozen members."""
        return {"best": list(self.best), "wait": list(self.wait), "frozen": list(self.frozen)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore `state_dict`'s output."""
        self.best = list(state["best"])
        self.wait = list(state["wait"])
        self.frozen = list(state["frozen"])

    def on_log(self, loop: Loop, metrics: dict[str, float]) -> None:
        """Check training metrics (when ``monitor`` starts with ``train/``)."""
        self._check(loop, metrics)

    def on_eval(self, loop: Loop, metrics: dict[str, float]) -> None:
        """Check evaluation metrics (when ``monitor`` starts with ``val/``)."""
        self._check(loop, metrics)

    def _check(self, loop: Loop, metrics: dict[str, float]) -> None:
        values = {}
        i = 0
        while f"{self.monitor}/{i}" in metrics:
            values[i] = metrics[f"{self.monitor}/{i}"]
            i += 1
        if not values:
            return
        n = len(values)
        if len(self.best) != n:
            self.best, self.wait = [None] * n, [0] * n
        newly = []
        for i, v in values.items():
            if i in self.frozen or not math.isfinite(v):
                continue
            best = self.best[i]
            better = best is None or (v < best - self.min_delta if self.mode == "min"
                                      else v > best + self.min_delta)
            if better:
                self.best[i], self.wait[i] = v, 0
            else:
                self.wait[i] += 1
                if self.wait[i] >= self.patience:
                    newly.append(i)
        if newly:
            self.frozen = sorted(set(self.frozen) | set(newly))
            loop.state = freeze(loop.state, newly)
        if len(self.frozen) == n:
            loop.request_stop(f"population.EarlyStopping: every member stopped improving "
                              f"{self.monitor}")


