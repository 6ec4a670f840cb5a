"""Optimizers as pure functions, in optax's design and with optax's names.

A `GradientTransformation` is a pair ``(init, update)``; optimizers are `chain` s of small
transformations; states are NamedTuples of tensors; step counters are 0-d int64 tensors and
schedules are branch-free functions of them, so a whole training step compiles into one graph
with ``torch.compile(fullgraph=True)`` and never recompiles as the step or learning rate moves.

It holds optax's optimizers under optax's names and defaults, the ``torch.optim`` ones optax
lacks (`asgd`, `muon`, torch's NAdam via ``nadam(momentum_decay=...)``), optax.contrib's recent
ones (`schedule_free_adamw`, `prodigy`, `sam`, `adopt`, `ademamix`, `reduce_on_plateau`) and
weight averaging in the state (`ema_params`, `swa_params`, `averaged_params`). Values only the
step knows (a loss for `polyak_sgd` or `reduce_on_plateau`) are passed as keywords of
``update`` and reach every transformation through `chain` and the wrappers.
``torch.optim.LBFGS`` has no counterpart: its step re-evaluates the loss several times (a line
search) and branches on the values on the host, which a pure ``update(grads, state, params)``
cannot do without taking the loss function itself.

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

from ._accumulation import ApplyEveryState as ApplyEveryState
from ._accumulation import MultiSteps as MultiSteps
from ._accumulation import MultiStepsState as MultiStepsState
from ._accumulation import apply_every as apply_every
from ._accumulation import skip_large_updates as skip_large_updates
from ._accumulation import skip_not_finite as skip_not_finite
from ._adam_family import ScaleByAdanState as ScaleByAdanState
from ._adam_family import ScaleByAdemamixState as ScaleByAdemamixState
from ._adam_family import ScaleByAmsgradState as ScaleByAmsgradState
from ._adam_family import ScaleByBeliefState as ScaleByBeliefState
from ._adam_family import ScaleByNadamState as ScaleByNadamState
from ._adam_family import scale_by_adamax as scale_by_adamax
from ._adam_family import scale_by_adan as scale_by_adan
from ._adam_family import scale_by_ademamix as scale_by_ademamix
from ._adam_family import scale_by_adopt as scale_by_adopt
from ._adam_family import scale_by_amsgrad as scale_by_amsgrad
from ._adam_family import scale_by_belief as scale_by_belief
from ._adam_family import scale_by_nadam as scale_by_nadam
from ._adam_family import scale_by_radam as scale_by_radam
from ._adam_family import scale_by_yogi as scale_by_yogi
from ._adaptive import ScaleByAdamState as ScaleByAdamState
from ._adaptive import ScaleByLionState as ScaleByLionState
from ._adaptive import ScaleByRmsState as ScaleByRmsState
from ._adaptive import ScaleByRmsWithCountState as ScaleByRmsWithCountState
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
from ._averaging import AveragedParamsState as AveragedParamsState
from ._averaging import averaged_params as averaged_params
from ._averaging import ema_params as ema_params
from ._averaging import swa_params as swa_params
from ._base import EmptyState as EmptyState
from ._base import GradientTransformation as GradientTransformation
from ._base import apply_updates as apply_updates
from ._base import chain as chain
from ._base import identity as identity
from ._base import set_to_zero as set_to_zero
from ._classic import EmaState as EmaState
from ._classic import ScaleByAdaDeltaState as ScaleByAdaDeltaState
from ._classic import ScaleByAsgdState as ScaleByAsgdState
from ._classic import ScaleByNovogradState as ScaleByNovogradState
from ._classic import ScaleByOptimisticGradientState as ScaleByOptimisticGradientState
from ._classic import ScaleByRpropState as ScaleByRpropState
from ._classic import ScaleBySM3State as ScaleBySM3State
from ._classic import ema as ema
from ._classic import scale_by_adadelta as scale_by_adadelta
from ._classic import scale_by_asgd as scale_by_asgd
from ._classic import scale_by_novograd as scale_by_novograd
from ._classic import scale_by_optimistic_gradient as scale_by_optimistic_gradient
from ._classic import scale_by_polyak as scale_by_polyak
from ._classic import scale_by_rprop as scale_by_rprop
from ._classic import scale_by_sign as scale_by_sign
from ._classic import scale_by_sm3 as scale_by_sm3
from ._clipping import adaptive_grad_clip as adaptive_grad_clip
from ._clipping import clip as clip
from ._clipping import clip_by_block_rms as clip_by_block_rms
from ._clipping import clip_by_global_norm as clip_by_global_norm
from ._clipping import global_norm as global_norm
from ._combining import flatten as flatten
from ._combining import freeze as freeze
from ._combining import partition as partition
from ._combining import selective_transform as selective_transform
from ._constrain import ZeroNansState as ZeroNansState
from ._constrain import keep_params_nonnegative as keep_params_nonnegative
from ._constrain import zero_nans as zero_nans
from ._contrib import ProdigyState as ProdigyState
from ._contrib import SAMState as SAMState
from ._contrib import ademamix as ademamix
from ._contrib import adopt as adopt
from ._contrib import normalize as normalize
from ._contrib import prodigy as prodigy
from ._contrib import sam as sam
from ._epoch_schedules import multistep_lr as multistep_lr
from ._epoch_schedules import step_lr as step_lr
from ._factored import FactoredState as FactoredState
from ._factored import scale_by_factored_rms as scale_by_factored_rms
from ._families import adabelief as adabelief
from ._families import adadelta as adadelta
from ._families import adafactor as adafactor
from ._families import adamax as adamax
from ._families import adamaxw as adamaxw
from ._families import adan as adan
from ._families import amsgrad as amsgrad
from ._families import asgd as asgd
from ._families import fromage as fromage
from ._families import lamb as lamb
from ._families import lars as lars
from ._families import nadam as nadam
from ._families import nadamw as nadamw
from ._families import noisy_sgd as noisy_sgd
from ._families import novograd as novograd
from ._families import optimistic_gradient_descent as optimistic_gradient_descent
from ._families import polyak_sgd as polyak_sgd
from ._families import radam as radam
from ._families import rprop as rprop
from ._families import sign_sgd as sign_sgd
from ._families import signum as signum
from ._families import sm3 as sm3
from ._families import yogi as yogi
from ._lookahead import LookaheadParams as LookaheadParams
from ._lookahead import LookaheadState as LookaheadState
from ._lookahead import lookahead as lookahead
from ._masking import MaskedNode as MaskedNode
from ._masking import MaskedState as MaskedState
from ._masking import MultiTransformState as MultiTransformState
from ._masking import masked as masked
from ._masking import multi_transform as multi_transform
from ._muon import ScaleByMuonState as ScaleByMuonState
from ._muon import muon as muon
from ._muon import orthogonalize_via_newton_schulz as orthogonalize_via_newton_schulz
from ._muon import scale_by_muon as scale_by_muon
from ._noise import AddNoiseState as AddNoiseState
from ._noise import add_noise as add_noise
from ._normalize import centralize as centralize
from ._normalize import normalize_by_update_norm as normalize_by_update_norm
from ._normalize import scale_by_param_block_norm as scale_by_param_block_norm
from ._normalize import scale_by_param_block_rms as scale_by_param_block_rms
from ._normalize import scale_by_trust_ratio as scale_by_trust_ratio
from ._plateau import ReduceLROnPlateauState as ReduceLROnPlateauState
from ._plateau import reduce_on_plateau as reduce_on_plateau
from ._schedule_free import ScheduleFreeState as ScheduleFreeState
from ._schedule_free import schedule_free as schedule_free
from ._schedule_free import schedule_free_adamw as schedule_free_adamw
from ._schedule_free import schedule_free_eval_params as schedule_free_eval_params
from ._schedule_free import schedule_free_sgd as schedule_free_sgd
from ._schedules import constant_schedule as constant_schedule
from ._schedules import cosine_decay_schedule as cosine_decay_schedule
from ._schedules import cosine_onecycle_schedule as cosine_onecycle_schedule
from ._schedules import exponential_decay as exponential_decay
from ._schedules import join_schedules as join_schedules
from ._schedules import linear_onecycle_schedule as linear_onecycle_schedule
from ._schedules import linear_schedule as linear_schedule
from ._schedules import piecewise_constant_schedule as piecewise_constant_schedule
from ._schedules import piecewise_interpolate_schedule as piecewise_interpolate_schedule
from ._schedules import polynomial_schedule as polynomial_schedule
from ._schedules import sgdr_schedule as sgdr_schedule
from ._schedules import warmup_constant_schedule as warmup_constant_schedule
from ._schedules import warmup_cosine_decay_schedule as warmup_cosine_decay_schedule
from ._schedules import warmup_exponential_decay_schedule as warmup_exponential_decay_schedule
from ._transforms import ScaleByScheduleState as ScaleByScheduleState
from ._transforms import TraceState as TraceState
from ._transforms import WeightDecayScheduleState as WeightDecayScheduleState
from ._transforms import add_decayed_weights as add_decayed_weights
from ._transforms import scale as scale
from ._transforms import scale_by_learning_rate as scale_by_learning_rate
from ._transforms import scale_by_schedule as scale_by_schedule
from ._transforms import trace as trace
from ._wrappers import ApplyIfFiniteState as ApplyIfFiniteState
from ._wrappers import InjectHyperparamsState as InjectHyperparamsState
from ._wrappers import apply_if_finite as apply_if_finite
from ._wrappers import inject_hyperparams as inject_hyperparams

__all__ = [
    "AddNoiseState",
    "ApplyEveryState",
    "ApplyIfFiniteState",
    "AveragedParamsState",
    "EmaState",
    "EmptyState",
    "FactoredState",
    "GradientTransformation",
    "InjectHyperparamsState",
    "LookaheadParams",
    "LookaheadState",
    "MaskedNode",
    "MaskedState",
    "MultiSteps",
    "MultiStepsState",
    "MultiTransformState",
    "ProdigyState",
    "ReduceLROnPlateauState",
    "SAMState",
    "ScaleByAdaDeltaState",
    "ScaleByAdamState",
    "ScaleByAdanState",
    "ScaleByAdemamixState",
    "ScaleByAmsgradState",
    "ScaleByAsgdState",
    "ScaleByBeliefState",
    "ScaleByLionState",
    "ScaleByMuonState",
    "ScaleByNadamState",
    "ScaleByNovogradState",
    "ScaleByOptimisticGradientState",
    "ScaleByRStdDevState",
    "ScaleByRmsState",
    "ScaleByRmsWithCountState",
    "ScaleByRpropState",
    "ScaleByRssState",
    "ScaleBySM3State",
    "ScaleByScheduleState",
    "ScheduleFreeState",
    "TraceState",
    "WeightDecayScheduleState",
    "ZeroNansState",
    "adabelief",
    "adadelta",
    "adafactor",
    "adagrad",
    "adam",
    "adamax",
    "adamaxw",
    "adamw",
    "adan",
    "adaptive_grad_clip",
    "add_decayed_weights",
    "add_noise",
    "ademamix",
    "adopt",
    "amsgrad",
    "apply_every",
    "apply_if_finite",
    "apply_updates",
    "asgd",
    "averaged_params",
    "centralize",
    "chain",
    "clip",
    "clip_by_block_rms",
    "clip_by_global_norm",
    "constant_schedule",
    "cosine_decay_schedule",
    "cosine_onecycle_schedule",
    "ema",
    "ema_params",
    "exponential_decay",
    "flatten",
    "freeze",
    "fromage",
    "global_norm",
    "identity",
    "inject_hyperparams",
    "join_schedules",
    "keep_params_nonnegative",
    "lamb",
    "lars",
    "linear_onecycle_schedule",
    "linear_schedule",
    "lion",
    "lookahead",
    "masked",
    "multi_transform",
    "multistep_lr",
    "muon",
    "nadam",
    "nadamw",
    "noisy_sgd",
    "normalize",
    "normalize_by_update_norm",
    "novograd",
    "optimistic_gradient_descent",
    "orthogonalize_via_newton_schulz",
    "partition",
    "piecewise_constant_schedule",
    "piecewise_interpolate_schedule",
    "polyak_sgd",
    "polynomial_schedule",
    "prodigy",
    "radam",
    "reduce_on_plateau",
    "rmsprop",
    "rprop",
    "sam",
    "scale",
    "scale_by_adadelta",
    "scale_by_adam",
    "scale_by_adamax",
    "scale_by_adan",
    "scale_by_ademamix",
    "scale_by_adopt",
    "scale_by_amsgrad",
    "scale_by_asgd",
    "scale_by_belief",
    "scale_by_factored_rms",
    "scale_by_learning_rate",
    "scale_by_lion",
    "scale_by_muon",
    "scale_by_nadam",
    "scale_by_novograd",
    "scale_by_optimistic_gradient",
    "scale_by_param_block_norm",
    "scale_by_param_block_rms",
    "scale_by_polyak",
    "scale_by_radam",
    "scale_by_rms",
    "scale_by_rprop",
    "scale_by_rss",
    "scale_by_schedule",
    "scale_by_sign",
    "scale_by_sm3",
    "scale_by_stddev",
    "scale_by_trust_ratio",
    "scale_by_yogi",
    "schedule_free",
    "schedule_free_adamw",
    "schedule_free_eval_params",
    "schedule_free_sgd",
    "selective_transform",
    "set_to_zero",
    "sgd",
    "sgdr_schedule",
    "sign_sgd",
    "signum",
    "skip_large_updates",
    "skip_not_finite",
    "sm3",
    "step_lr",
    "swa_params",
    "trace",
    "warmup_constant_schedule",
    "warmup_cosine_decay_schedule",
    "warmup_exponential_decay_schedule",
    "yogi",
    "zero_nans",
]
