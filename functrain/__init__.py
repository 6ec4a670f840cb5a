"""functrain: a functional, JAX-style training API for PyTorch.

Write a pure ``step(state, batch) -> (state, metrics)`` with ``torch.func``; `fit` runs it
through a compiled-step runner that owns device placement, compilation, donation, metric
accumulation, logging and callbacks.

Example:
    >>> import torch, functrain as ft
    >>> model = torch.nn.Linear(4, 2)
    >>> state = ft.TrainState.create(model, ft.optim.adamw(1e-3), seed=0)
    >>> sorted(state.params)
    ['bias', 'weight']
"""

from . import callbacks as callbacks
from . import checkpoint as checkpoint
from . import data as data
from . import distributed as distributed
from . import loggers as loggers
from . import metrics as metrics
from . import optim as optim
from . import population as population
from . import precision as precision
from . import privacy as privacy
from . import random as random
from . import tree as tree
from ._bridge import call as call
from ._bridge import split as split
from ._bridge import split_module as split_module
from ._donation import DonatedStateError as DonatedStateError
from ._evaluate import eager as eager
from ._evaluate import evaluate as evaluate
from ._fit import fit as fit
from ._grad import grad_and_value as grad_and_value
from ._loop_state import LoopState as LoopState
from ._multistep import stack_batches as stack_batches
from ._predict import predict as predict
from ._remat import remat as remat
from ._run_config import Checkpointing as Checkpointing
from ._run_config import Logging as Logging
from ._runner import CompiledStep as CompiledStep
from ._runner import RecompileError as RecompileError
from ._runner import compile_step as compile_step
from ._seed import seed_everything as seed_everything
from ._signals import Preempted as Preempted
from ._state import TrainState as TrainState
from ._summary import model_summary as model_summary
from ._version import __version__ as __version__
from ._window import MetricWindow as MetricWindow
from .callbacks import Callback as Callback
from .callbacks import Loop as Loop
from .per_example import per_example_grads as per_example_grads

__all__ = [
    "Callback",
    "Checkpointing",
    "CompiledStep",
    "DonatedStateError",
    "Logging",
    "Loop",
    "LoopState",
    "MetricWindow",
    "Preempted",
    "RecompileError",
    "TrainState",
    "__version__",
    "call",
    "callbacks",
    "checkpoint",
    "compile_step",
    "data",
    "distributed",
    "eager",
    "evaluate",
    "fit",
    "grad_and_value",
    "loggers",
    "metrics",
    "model_summary",
    "optim",
    "per_example_grads",
    "population",
    "precision",
    "predict",
    "privacy",
    "random",
    "remat",
    "seed_everything",
    "split",
    "split_module",
    "stack_batches",
    "tree",
]
