"""What `functrain.fit` does differently on several ranks, in one place.

`DataParallelRun.detect` returns None in a plain process (and under torchrun with one worker),
so fit's single-process path is untouched. On N ranks fit asks it to:

* start the process group from torchrun's environment (`initialize`);
* give every rank rank 0's initial state (one broadcast; skipped on resume, where every rank
  restores the same checkpoint) and wrap the optimizer with `data_parallel`, so
  ``apply_gradients`` averages the gradients inside the compiled step;
* wrap the step: each rank runs it with ``state.rng`` folded with its rank (keyed dropout
  differs across ranks; the state keeps the run's key, so checkpoints are rank-independent),
  and the floating buffers it returns (BatchNorm statistics) are averaged, so they stay
  identical on every rank; a `functrain.CompiledStep` is replaced by a runner with the same
  settings around the wrapped step (`data_parallel_runner`);
* shard the training loader (equal, padded shares) and the evaluation loader (exact shares);
* reduce each metric window when it is read (one all-gather), and agree on stopping (one
  all-reduce of a flag per log window), so that every rank stops at the same step.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Any

import torch

from . import _env
from ._collectives import _group, broadcast, fold_in_rank, pmean
from ._data import ShardedLoader, shard
from ._metrics import reduce_metrics
from ._optim import data_parallel
from ._shard import layout_of, sharded_step

__all__ = ["DataParallelRun"]

_STEPS: weakref.WeakKeyDictionary[Any, Callable[..., Any]] = weakref.WeakKeyDictionary()
_TXS: dict[Any, Any] = {}


def data_parallel_step(step_fn: Callable[[Any, Any], Any]) -> Callable[[Any, Any], Any]:
    """``step_fn`` with the rank folded into ``state.rng`` and floating buffers averaged.

    Returned once per ``step_fn`` (cached), so fit's compiled runner for it is reused.
    """
    try:
        return _STEPS[step_fn]
    except (KeyError, TypeError):
        pass

    gathered = sharded_step(step_fn)  # full params in, shards out (a sharded state only)

    def step(state: Any, batch: Any) -> Any:
        rng = getattr(state, "rng", None)
        folded = None
        if isinstance(rng, torch.Tensor) and hasattr(state, "replace"):
            folded = fold_in_rank(rng)
            state = state.replace(rng=folded)
        new_state, metrics = gathered(state, batch)
        changes = {}
        if folded is not None and getattr(new_state, "rng", None) is folded:
            changes["rng"] = rng  # the step kept the key: hand back the run's own key
        buffers = getattr(new_state, "buffers", None)
        if isinstance(buffers, dict) and hasattr(new_state, "replace"):
            floating = {k: v for k, v in buffers.items()
                        if isinstance(v, torch.Tensor) and v.is_floating_point()}
            if floating:
                # Integer buffers (BatchNorm's num_batches_tracked) advance alike on every rank.
                changes["buffers"] = {**buffers, **pmean(floating)}
        if changes:
            new_state = new_state.replace(**changes)
        return new_state, metrics

    step.__wrapped__ = step_fn  # type: ignore[attr-defined]
    try:
        _STEPS[step_fn] = step
    except TypeError:
        pass
    return step


_RUNNERS: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()


def data_parallel_runner(run: Any) -> Any:
    """A `functrain.CompiledStep` like ``run`` (backend, device, precision, donation, checks,
    steps per call) whose step is ``data_parallel_step`` of ``run``'s: a runner passed to fit
    on several ranks then behaves as a plain step function does there (rank folded into the
    key, floating buffers averaged; the gradients are averaged by the optimizer either way).

    ``run`` itself is left as it is (its compile counts do not include fit's graph); the new
    runner is made once per ``run``, so fitting with the same runner again does not recompile.
    """
    try:
        return _RUNNERS[run]
    except KeyError:
        pass
    from .._runner import CompiledStep

    new = CompiledStep(run.step_fn, compile=run.backend, device=run.device, donate=run.donate,
                       on_recompile=run.on_recompile, return_metrics=run.return_metrics,
                       precision=run.policy, check_finite=run.check_finite,
                       devices=run.devices, train=run.train, steps_per_call=run.steps_per_call)
    # ``run.step_fn`` is the user's step already inside the precision policy (autocast, batch
    # cast, loss-scale check); the rank's key and the buffer average go around it, as they do
    # around the policy-wrapped step of a plain function. Read when the runner first traces.
    new.step_fn = data_parallel_step(run.step_fn)
    _RUNNERS[run] = new
    return new


class DataParallelRun:
    """fit's data-parallel helper for this process; build it with `detect`.

    Attributes:
        env: this rank's `Environment`.
        rank: this rank.
        world_size: the number of ranks.
        is_main: True on rank 0, which logs, shows progress and prints the summary.
    """

    def __init__(self, env: _env.Environment) -> None:
        self.env, self.rank, self.world_size = env, env.rank, env.world_size
        self.is_main = env.rank == 0
        self.group = _group()

    @classmethod
    def detect(cls) -> DataParallelRun | None:
        """Join (start if needed) the process group when this is one of several ranks."""
        env = _env.environment()
        if _env._initialized():
            world = _env.world_size()
            if world == 1:
                return None
            return cls(_env.Environment(_env.rank(), world, _env.local_rank(),
                                        env.local_world_size if env else world))
        if env is None or env.world_size == 1:
            return None
        return cls(_env.initialize())

    # -- state -------------------------------------------------------------------------------
    def prepare_state(self, state: Any, *, resumed: bool) -> Any:
        """Rank 0's state on every rank (unless resumed), with a gradient-averaging optimizer.
        A sharded state (`shard_state`) is left as it is: its optimizer averages already."""
        if layout_of(state) is not None:
            return state
        if not resumed:
            state = broadcast(state)
        tx = getattr(state, "tx", None)
        if tx is not None and hasattr(state, "replace"):
            key = tx
            try:
                wrapped = _TXS.get(key)
            except TypeError:
                key, wrapped = None, None
            if wrapped is None:
                wrapped = data_parallel(tx)
                if key is not None:
                    _TXS[key] = wrapped
            state = state.replace(tx=wrapped)
        return state

    def wrap_step(self, step_fn: Any) -> Any:
        """``step_fn`` run data parallel (`data_parallel_step`); a `functrain.CompiledStep`
        gives a runner with its settings whose step is wrapped the same way."""
        from .._runner import CompiledStep

        if isinstance(step_fn, CompiledStep):
            return data_parallel_runner(step_fn)
        return data_parallel_step(step_fn)

    def compile_backend(self, compile: Any, device: Any) -> Any:
        """``compile="auto"`` on CUDA: inductor without CUDA graphs (CUDA graphs around NCCL
        collectives were not tried here: no multi-GPU machine)."""
        cuda = torch.cuda.is_available() and str(device).startswith(("auto", "cuda"))
        return "inductor" if cuda and compile in ("auto", True) else compile

    def broadcast(self, tensors: Any) -> Any:
        """Rank 0's tensors on every rank (one collective)."""
        return broadcast(tensors)

    # -- data --------------------------------------------------------------------------------
    def shard_train(self, loader: Any) -> Any:
        return shard(loader, even=True)

    def shard_eval(self, loader: Any) -> Any:
        sharded = shard(loader, even=False)
        if isinstance(sharded, ShardedLoader) and len(sharded) == 0:
            n = getattr(loader, "n", None) or len(loader.dataset)
            raise ValueError(
                f"eval_loader: {n} examples leave rank {self.rank} of {self.world_size} with "
                "none to evaluate. HINT: use at least as many evaluation examples as ranks.")
        return sharded

    # -- agreement ---------------------------------------------------------------------------
    def reduce(self, window: Any) -> Any:
        """The window merged over the ranks (one all-gather)."""
        return reduce_metrics(window)

    def any(self, flag: bool) -> bool:
        """True on every rank if ``flag`` is true on any (one all-reduce)."""
        import torch.distributed as dist

        pg = _group()
        if pg is None:
            return flag
        t = torch.tensor([int(bool(flag))], device=_comm_device())
        dist.all_reduce(t, op=dist.ReduceOp.MAX, group=pg)
        return bool(t.item())

    def broadcast_object(self, obj: Any) -> Any:
        """Rank 0's ``obj`` (a picklable value) on every rank."""
        import torch.distributed as dist

        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self) -> None:
        import torch.distributed as dist

        dist.barrier()


def _comm_device() -> torch.device:
    import torch.distributed as dist

    backend = str(dist.get_backend()).lower()
    if "nccl" in backend and torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")
