"""Optimizers as pure functions, in optax's design and with optax's names.

A `GradientTransformation` is a pair ``(init, update)``; optimizers are `chain` s of small
transformations; states are NamedTuples of tensors; step counters are 0-d int64 tensors and
schedules are branch-free functions of them, so a whole training step compiles into one graph
with ``torch.compile(fullgraph=True)`` and never recompiles as the step or learning rate moves.

Example:
    >>> import torch
    >>> from functrain import optim
    >>> params = {"w": torch.tensor([1.0, 2.0])}
    >>> opt = optim.chain(optim.clip_by_global_norm(1.0), optim.adamw(learning_rate=0.1))
    >>> state = opt.init(params)
    >>> grads = {"w": torch.tensor([0.5, -0.5])}
    >>> updates, state = opt.update(grads, state, params)
    >>> optim.apply_updates(params, updates)["w"]
    tensor([0.9000, 2.1000])
"""

from ._adaptive import ScaleByAdamState as ScaleByAdamState
from ._adaptive import ScaleByLionState as ScaleByLionState
from ._adaptive import ScaleByRmsState as ScaleByRmsState
from ._adaptive import ScaleByRssState as ScaleByRssState
from ._adaptive import ScaleByRStdDevState as ScaleByRStdDevState
from ._adaptive import scale_by_adam as scale_by_adam
from ._adaptive import scale_by_lion as scale_by_lion
from ._adaptive import scale_by_rms as scale_by_rms
from ._adaptive import scale_by_rss as scale_by_rss
from ._adaptive import scale_by_stddev as scale_by_stddev
from ._alias import adagrad as adagrad
from ._alias import adam as adam
from ._alias import adamw as adamw
from ._alias import lion as lion
from ._alias import rmsprop as rmsprop
from ._alias import sgd as sgd
from ._base import EmptyState as EmptyState
from ._base import GradientTransformation as GradientTransformation
from ._base import apply_updates as apply_updates
from ._base import chain as chain
from ._base import identity as identity
from ._base import set_to_zero as set_to_zero
from ._clipping import clip as clip
from ._clipping import clip_by_global_norm as clip_by_global_norm
from ._epoch_schedules import multistep_lr as multistep_lr
from ._epoch_schedules import step_lr as step_lr
from ._masking import MaskedNode as MaskedNode
from ._masking import MaskedState as MaskedState
from ._masking import MultiTransformState as MultiTransformState
from ._masking import masked as masked
from ._masking import multi_transform as multi_transform
from ._schedules import constant_schedule as constant_schedule
from ._schedules import cosine_decay_schedule as cosine_decay_schedule
from ._schedules import exponential_decay as exponential_decay
from ._schedules import join_schedules as join_schedules
from ._schedules import linear_schedule as linear_schedule
from ._schedules import piecewise_constant_schedule as piecewise_constant_schedule
from ._schedules import polynomial_schedule as polynomial_schedule
from ._schedules import warmup_cosine_decay_schedule as warmup_cosine_decay_schedule
from ._transforms import ScaleByScheduleState as ScaleByScheduleState
from ._transforms import TraceState as TraceState
from ._transforms import add_decayed_weights as add_decayed_weights
from ._transforms import scale as scale
from ._transforms import scale_by_learning_rate as scale_by_learning_rate
from ._transforms import scale_by_schedule as scale_by_schedule
from ._transforms import trace as trace
from ._wrappers import ApplyIfFiniteState as ApplyIfFiniteState
from ._wrappers import InjectHyperparamsState as InjectHyperparamsState
from ._wrappers import MultiSteps as MultiSteps
from ._wrappers import MultiStepsState as MultiStepsState
from ._wrappers import apply_if_finite as apply_if_finite
from ._wrappers import inject_hyperparams as inject_hyperparams

__all__ = [
    # Core.
    "EmptyState",
    "GradientTransformation",
    "apply_updates",
    "chain",
    "identity",
    "set_to_zero",
    # Transformations.
    "ScaleByAdamState",
    "ScaleByLionState",
    "ScaleByRStdDevState",
    "ScaleByRmsState",
    "ScaleByRssState",
    "ScaleByScheduleState",
    "TraceState",
    "add_decayed_weights",
    "clip",
    "clip_by_global_norm",
    "scale",
    "scale_by_adam",
    "scale_by_learning_rate",
    "scale_by_lion",
    "scale_by_rms",
    "scale_by_rss",
    "scale_by_schedule",
    "scale_by_stddev",
    "trace",
    # Wrappers.
    "ApplyIfFiniteState",
    "InjectHyperparamsState",
    "MaskedNode",
    "MaskedState",
    "MultiSteps",
    "MultiStepsState",
    "MultiTransformState",
    "apply_if_finite",
    "inject_hyperparams",
    "masked",
    "multi_transform",
    # Optimizers.
    "adagrad",
    "adam",
    "adamw",
    "lion",
    "rmsprop",
    "sgd",
    # Schedules.
    "constant_schedule",
    "cosine_decay_schedule",
    "exponential_decay",
    "join_schedules",
    "linear_schedule",
    "multistep_lr",
    "piecewise_constant_schedule",
    "polynomial_schedule",
    "step_lr",
    "warmup_cosine_decay_schedule",
]
