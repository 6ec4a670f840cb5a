"""Data parallel training on ``torch.distributed``: ranks, collectives, sharding, launching.

The pieces a data-parallel step needs, JAX-style:

* `initialize` starts the process group from torchrun's environment (NCCL for CUDA, gloo
  otherwise; each rank on GPU ``LOCAL_RANK``); `rank`, `world_size`, `is_main` answer for it
  (0 of 1 in a plain process).
* `pmean` / `psum` reduce a pytree across ranks with ``torch.distributed``'s functional
  collectives, which trace into the compiled step: ``grads = pmean(grads)`` inside a step under
  ``torch.compile(fullgraph=True)`` is one graph, all-reduce included. Without a group they are
  the identity, so the same step runs in one process.
* `fold_in_rank` gives each rank its own random key (dropout masks differ across ranks and
  repeat across runs).
* `shard` gives each rank its share of a loader with ``DistributedSampler``'s semantics.
* `data_parallel` wraps an optimizer so ``apply_gradients`` averages the gradients first
  (what ``fit`` does on several ranks, leaving the step unchanged).
* `reduce_metrics` merges the ranks' metric windows exactly, with one collective per read.
* `shard_state` shards parameters, gradients and optimizer state over the ranks (ZeRO-3 /
  FSDP, or ``mode="zero1"``); `create_sharded_state` builds such a state from a ``meta``
  module, one shard per rank; `export_full_params` writes a sharded checkpoint's full weights.
* `launch` starts N local workers from Python (notebooks, tests) as torchrun would.

Example (``torchrun --nproc-per-node 2 script.py``; in one process it runs as it is):

    >>> import torch, functrain as ft
    >>> from functrain import distributed as dist
    >>> model = torch.nn.Linear(4, 1)
    >>> def step(state, batch):
    ...     x, y = batch
    ...     def loss_fn(params):
    ...         out, _ = ft.call(model, params, state.buffers, x)
    ...         return ((out - y) ** 2).mean()
    ...     grads, loss = torch.func.grad_and_value(loss_fn)(state.params)
    ...     return state.apply_gradients(dist.pmean(grads)), {"loss": loss}
    >>> state = ft.TrainState.create(model, ft.optim.sgd(0.1))
    >>> state, _ = step(state, (torch.ones(8, 4), torch.zeros(8, 1)))
    >>> dist.world_size(), int(state.step)
    (1, 1)
"""

from ._collectives import all_gather as all_gather
from ._collectives import broadcast as broadcast
from ._collectives import fold_in_rank as fold_in_rank
from ._collectives import pmean as pmean
from ._collectives import psum as psum
from ._data import ShardedLoader as ShardedLoader
from ._data import ShardSampler as ShardSampler
from ._data import presharded as presharded
from ._data import shard as shard
from ._data import shard_indices as shard_indices
from ._env import DEFAULT_TIMEOUT as DEFAULT_TIMEOUT
from ._env import Environment as Environment
from ._env import device as device
from ._env import environment as environment
from ._env import initialize as initialize
from ._env import is_main as is_main
from ._env import local_rank as local_rank
from ._env import rank as rank
from ._env import shutdown as shutdown
from ._env import world_size as world_size
from ._launch import LaunchError as LaunchError
from ._launch import launch as launch
from ._metrics import reduce_metrics as reduce_metrics
from ._optim import data_parallel as data_parallel
from ._shard import ShardLayout as ShardLayout
from ._shard import sharded_step as sharded_step
from ._shard_export import export_full_params as export_full_params
from ._shard_optim import ShardedOptimizer as ShardedOptimizer
from ._shard_state import create_sharded_state as create_sharded_state
from ._shard_state import shard_state as shard_state

__all__ = [
    "DEFAULT_TIMEOUT",
    "Environment",
    "LaunchError",
    "ShardLayout",
    "ShardSampler",
    "ShardedLoader",
    "ShardedOptimizer",
    "all_gather",
    "broadcast",
    "create_sharded_state",
    "data_parallel",
    "device",
    "environment",
    "export_full_params",
    "fold_in_rank",
    "initialize",
    "is_main",
    "launch",
    "local_rank",
    "pmean",
    "presharded",
    "psum",
    "rank",
    "reduce_metrics",
    "shard",
    "shard_indices",
    "shard_state",
    "sharded_step",
    "shutdown",
    "world_size",
]
