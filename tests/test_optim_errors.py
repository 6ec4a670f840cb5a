"""Bad input is refused eagerly (in the factory or at the first update), with a message that
names the argument or the leaf path."""

from __future__ import annotations

import pytest
import torch

from functrain import optim
from functrain.tree import TreeMismatchError


def _params():
    return {"fc": {"weight": torch.ones(4, 3), "bias": torch.zeros(3)}}


def _grads():
    return {"fc": {"weight": torch.ones(4, 3), "bias": torch.ones(3)}}


# ---------------------------------------------------------------------------------------------
# Trees.


def test_apply_updates_names_the_leaf_with_the_wrong_shape():
    grads = _grads()
    grads["fc"]["weight"] = torch.ones(3, 4)
    with pytest.raises(TreeMismatchError,
                       match=r"updates\['fc'\]\['weight'\]: expected shape \(4, 3\), got \(3, 4\)"):
        optim.apply_updates(_params(), grads)


def test_apply_updates_names_the_missing_key():
    with pytest.raises(TreeMismatchError, match=r"updates\['fc'\].*missing \['bias'\]"):
        optim.apply_updates(_params(), {"fc": {"weight": torch.ones(4, 3)}})


def test_update_with_params_checks_structure_and_dtype():
    opt = optim.adamw(0.1)
    params = _params()
    state = opt.init(params)
    grads = _grads()
    grads["fc"]["bias"] = grads["fc"]["bias"].double()
    with pytest.raises(TreeMismatchError, match=r"updates\['fc'\]\['bias'\]: expected dtype "
                                                r"torch.float32, got torch.float64.*HINT"):
        opt.update(grads, state, params)
    with pytest.raises(TreeMismatchError, match=r"updates\['fc'\]: .*unexpected \['extra'\]"):
        opt.update({"fc": {**_grads()["fc"], "extra": torch.ones(1)}}, state, params)


def test_update_without_params_checks_against_the_state():
    opt = optim.adam(0.1)
    state = opt.init(_params())
    with pytest.raises(TreeMismatchError, match=r"updates\['fc'\]\['weight'\]: expected shape "
                                                r"\(4, 3\), got \(2,\).*state.nu.*init\(\)"):
        opt.update({"fc": {"weight": torch.ones(2), "bias": torch.ones(3)}}, state)


def test_integer_and_non_tensor_leaves_are_refused():
    with pytest.raises(TypeError, match=r"params\['step'\]: expected a floating-point tensor, "
                                        r"got dtype torch.int64.*HINT"):
        optim.adam(0.1).init({"w": torch.ones(2), "step": torch.tensor(3)})
    with pytest.raises(TypeError, match=r"params\['w'\]: expected a floating-point tensor, "
                                        r"got 1.0"):
        optim.sgd(0.1, momentum=0.9).init({"w": 1.0})
    with pytest.raises(TypeError, match=r"updates\['w'\]: expected a floating-point tensor"):
        optim.sgd(0.1).update({"w": torch.tensor([1, 2])}, optim.sgd(0.1).init(None))
    with pytest.raises(TypeError, match=r"params\['w'\]: expected a floating-point tensor"):
        optim.apply_updates({"w": torch.tensor([1, 2])}, {"w": torch.ones(2)})


def test_add_decayed_weights_needs_params():
    opt = optim.adamw(0.1)
    with pytest.raises(ValueError, match=r"add_decayed_weights: expected params.*HINT"):
        opt.update(_grads(), opt.init(_params()))


# ---------------------------------------------------------------------------------------------
# Hyperparameters.


@pytest.mark.parametrize("make, match", [
    (lambda: optim.sgd(-0.1), r"learning_rate: expected a number in \[0, inf\), got -0.1"),
    (lambda: optim.adam("fast"), r"learning_rate: expected a number or a schedule.*got 'fast'"),
    (lambda: optim.adamw([1e-3]), r"learning_rate: expected a number or a schedule"),
    (lambda: optim.adam(0.1, b1=1.0), r"b1: expected a number in \[0, 1\), got 1.0"),
    (lambda: optim.adamw(0.1, b2=-0.5), r"b2: expected a number in \[0, 1\), got -0.5"),
    (lambda: optim.rmsprop(0.1, decay=1.5), r"decay: expected a number in \[0, 1\)"),
    (lambda: optim.sgd(0.1, momentum=1.2), r"decay: expected a number in \[0, 1\)"),
    (lambda: optim.lion(0.1, b2=float("nan")), r"b2: expected a number, got nan"),
    (lambda: optim.adam(0.1, eps=-1e-8), r"eps: expected a number in \[0, inf\), got -1e-08"),
    (lambda: optim.adagrad(0.1, eps=-1.0), r"eps: expected a number in \[0, inf\)"),
    (lambda: optim.adamw(0.1, weight_decay=-0.1), r"weight_decay: expected a number in \[0"),
    (lambda: optim.adam(0.1, mu_dtype=torch.int32), r"mu_dtype: expected a floating"),
    (lambda: optim.clip_by_global_norm(0.0), r"max_norm: expected a number in \(0, inf\), "
                                             r"got 0.0.*HINT"),
    (lambda: optim.clip_by_global_norm(-1), r"max_norm: expected a number in \(0, inf\)"),
    (lambda: optim.clip(0), r"max_delta: expected a number in \(0, inf\)"),
    (lambda: optim.scale("x"), r"step_size: expected a number, got 'x'"),
    (lambda: optim.scale_by_schedule(0.1), r"step_size_fn: expected a schedule"),
    (lambda: optim.chain(optim.adam), r"transforms\[0\]: expected a GradientTransformation.*"
                                      r"HINT"),
    (lambda: optim.MultiSteps(optim.sgd(0.1), 0), r"every_k_schedule: expected a positive int"),
    (lambda: optim.apply_if_finite(optim.sgd(0.1), -1),
     r"max_consecutive_errors: expected a non-negative int"),
    (lambda: optim.inject_hyperparams(optim.adamw)(learning_rate=-1.0),
     r"learning_rate: expected a number in \[0, inf\)"),
    (lambda: optim.inject_hyperparams(optim.adam)(0.1, b1=2.0), r"b1: expected a number in"),
    (lambda: optim.inject_hyperparams(optim.adam)(0.1, beta1=0.9), r"beta1"),
])
def test_bad_hyperparameters_are_refused_in_the_factory(make, match):
    with pytest.raises((TypeError, ValueError), match=match):
        make()


@pytest.mark.parametrize("make, match", [
    (lambda: optim.cosine_decay_schedule(1.0, 0), r"decay_steps: expected a positive number"),
    (lambda: optim.linear_schedule(1.0, 0.0, 10.5), r"transition_steps: expected an int"),
    (lambda: optim.piecewise_constant_schedule(1.0, {10: -0.5}),
     r"boundaries_and_scales\[10\]: expected a number in \[0, inf\)"),
    (lambda: optim.join_schedules([optim.constant_schedule(1.0), 0.5], [3]),
     r"schedules\[1\]: expected a schedule"),
    (lambda: optim.join_schedules([optim.constant_schedule(1.0)], [3]),
     r"schedules: expected 2 schedules for 1 boundaries, got 1"),
    (lambda: optim.exponential_decay("1", 10, 0.5), r"init_value: expected a number"),
])
def test_bad_schedule_arguments_are_refused(make, match):
    with pytest.raises((TypeError, ValueError), match=match):
        make()


# ---------------------------------------------------------------------------------------------
# Masks and labels.


def test_mask_leaves_must_be_python_bools():
    opt = optim.masked(optim.sgd(0.1), {"fc": {"weight": torch.tensor(True), "bias": False}})
    with pytest.raises(TypeError, match=r"mask\['fc'\]\['weight'\]: expected a Python bool"):
        opt.init(_params())


def test_mask_structure_must_match_the_params():
    opt = optim.adamw(0.1, mask={"fc": {"weight": True}})
    with pytest.raises(TreeMismatchError, match=r"mask\['fc'\].*missing \['bias'\]"):
        opt.init(_params())


def test_unknown_labels_are_named():
    opt = optim.multi_transform({"a": optim.sgd(0.1)}, {"fc": {"weight": "a", "bias": "b"}})
    with pytest.raises(ValueError, match=r"param_labels\['fc'\]\['bias'\]: expected a label "
                                         r"among \['a'\], got 'b'"):
        opt.init(_params())


def test_injected_hyperparams_must_keep_their_keys():
    opt = optim.inject_hyperparams(optim.sgd)(0.1)
    state = opt.init(_params())
    state = state._replace(hyperparams={"lr": torch.tensor(0.1)})
    with pytest.raises(ValueError, match=r"state.hyperparams: expected keys \['learning_rate'\]"):
        opt.update(_grads(), state)


# ---------------------------------------------------------------------------------------------
# The optimizers, transforms and schedules added with optax's families and torch.optim's rest.


@pytest.mark.parametrize("make, match", [
    (lambda: optim.adabelief(0.1, b1=1.5), r"b1: expected a number in \[0, 1\)"),
    (lambda: optim.adadelta(0.1, rho=-0.1), r"rho: expected a number in \[0, 1\)"),
    (lambda: optim.adadelta(0.1, weight_decay="x"), r"weight_decay: expected a number.*"
                                                    r"HINT"),
    (lambda: optim.adafactor(min_dim_size_to_factor=0), r"min_dim_size_to_factor: expected an "
                                                         r"int >= 1, got 0"),
    (lambda: optim.adafactor(decay_rate=-0.8), r"decay_rate: expected a number in \[0"),
    (lambda: optim.adafactor(clipping_threshold=0.0), r"threshold: expected a number in \(0"),
    (lambda: optim.adamax(-1.0), r"learning_rate: expected a number in \[0, inf\)"),
    (lambda: optim.adamaxw(0.1, weight_decay=-1.0), r"weight_decay: expected a number in \[0"),
    (lambda: optim.amsgrad(0.1, eps_root=-1.0), r"eps_root: expected a number in \[0"),
    (lambda: optim.adan(0.1, b3=1.0), r"b3: expected a number in \[0, 1\)"),
    (lambda: optim.asgd(lambd=-1.0), r"lambd: expected a number in \[0"),
    (lambda: optim.asgd(t0="soon"), r"t0: expected a number, got 'soon'"),
    (lambda: optim.fromage("fast"), r"learning_rate: expected a number or a schedule"),
    (lambda: optim.lars(0.1, momentum=1.0), r"decay: expected a number in \[0, 1\)"),
    (lambda: optim.lamb(0.1, eps=-1.0), r"eps: expected a number in \[0"),
    (lambda: optim.nadam(0.1, momentum_decay=-4e-3), r"momentum_decay: expected a number in \[0"),
    (lambda: optim.nadam(0.1, eps_root=1e-8, momentum_decay=4e-3), r"eps_root, mu_dtype: "
                                                                   r"expected the defaults"),
    (lambda: optim.nadamw(0.1, b2=2.0), r"b2: expected a number in \[0, 1\)"),
    (lambda: optim.noisy_sgd(0.1, eta=-1.0), r"eta: expected a number in \[0"),
    (lambda: optim.noisy_sgd(0.1, key=1.5), r"key: expected an int.*HINT"),
    (lambda: optim.novograd(0.1, weight_decay=-0.1), r"weight_decay: expected a number in \[0"),
    (lambda: optim.optimistic_gradient_descent(0.1, alpha="a"), r"alpha: expected a number"),
    (lambda: optim.polyak_sgd(variant="sps++"), r"variant: expected one of 'sps', 'sps\+'"),
    (lambda: optim.polyak_sgd(max_learning_rate=-1.0), r"max_learning_rate: expected a number"),
    (lambda: optim.radam(0.1, threshold="5"), r"threshold: expected a number"),
    (lambda: optim.rprop(0.0), r"learning_rate: expected a number in \(0, inf\)"),
    (lambda: optim.rprop(0.1, eta_minus=1.5), r"eta_minus: expected a number in \(0, 1\]"),
    (lambda: optim.rprop(0.1, eta_plus=0.5), r"eta_plus: expected a number in \[1, inf\)"),
    (lambda: optim.rprop(0.1, min_step_size=1.0, max_step_size=0.5),
     r"max_step_size: expected a number in \[1, inf\)"),
    (lambda: optim.sign_sgd(-0.1), r"learning_rate: expected a number in \[0"),
    (lambda: optim.signum(0.1, beta=1.0), r"decay: expected a number in \[0, 1\)"),
    (lambda: optim.sm3(0.1, momentum=-0.5), r"b1: expected a number in \[0, 1\)"),
    (lambda: optim.sm3(-0.1), r"learning_rate: expected a number in \[0"),
    (lambda: optim.yogi(0.1, eps=-1.0), r"eps: expected a number in \[0"),
    (lambda: optim.muon(momentum=1.0), r"momentum: expected a number in \[0, 1\)"),
    (lambda: optim.muon(ns_coefficients=(1.0, 2.0)), r"ns_coefficients: expected three numbers"),
    (lambda: optim.muon(ns_steps=-1), r"ns_steps: expected an int >= 0, got -1"),
    (lambda: optim.muon(adjust_lr_fn="rms"), r"adjust_lr_fn: expected one of None, 'original'"),
    (lambda: optim.muon(ns_dtype=torch.int8), r"ns_dtype: expected a floating"),
    (lambda: optim.muon(weight_decay=-0.1), r"weight_decay: expected a number in \[0"),
    (lambda: optim.adopt(0.1, b2=1.0), r"b2: expected a number in \[0, 1\)"),
    (lambda: optim.ademamix(0.1, b3=1.2), r"b3: expected a number in \[0, 1\)"),
    (lambda: optim.ademamix(0.1, alpha="x"), r"alpha: expected a number"),
    (lambda: optim.prodigy(betas=0.9), r"betas: expected a pair"),
    (lambda: optim.prodigy(betas=(0.9, 1.0)), r"betas\[1\]: expected a number in \[0, 1\)"),
    (lambda: optim.prodigy(estim_lr0=0.0), r"estim_lr0: expected a number in \(0"),
    (lambda: optim.sam(optim.sgd(0.1), optim.sgd(0.1), sync_period=0),
     r"sync_period: expected an int >= 1, got 0"),
    (lambda: optim.schedule_free(optim.sgd(0.1), 0.1, b1=0.0), r"b1: expected a number in \(0"),
    (lambda: optim.schedule_free_adamw(-1.0), r"learning_rate: expected a number in \[0"),
    (lambda: optim.schedule_free_sgd(0.1, warmup_steps=2.5), r"transition_steps: expected an "
                                                            r"int"),
    (lambda: optim.reduce_on_plateau(factor=1.0), r"factor: expected a number in \(0, 1\)"),
    (lambda: optim.reduce_on_plateau(patience=-1), r"patience: expected an int >= 0"),
    (lambda: optim.reduce_on_plateau(rtol=0.0, atol=0.0), r"rtol, atol: expected at least one"),
    (lambda: optim.reduce_on_plateau(accumulation_size=0), r"accumulation_size: expected an int"),
    (lambda: optim.ema_params(decay=1.0), r"decay: expected a number in \[0, 1\)"),
    (lambda: optim.swa_params(every=0), r"every: expected an int >= 1, got 0"),
    (lambda: optim.swa_params(start=-1), r"start: expected an int >= 0"),
    (lambda: optim.clip_by_block_rms(0.0), r"threshold: expected a number in \(0, inf\)"),
    (lambda: optim.adaptive_grad_clip(-1.0), r"clipping: expected a number in \(0, inf\)"),
    (lambda: optim.add_noise(-0.1, 0.5), r"eta: expected a number in \[0"),
    (lambda: optim.add_decayed_weights(-0.1), r"weight_decay: expected a number in \[0.*HINT"),
    (lambda: optim.normalize_by_update_norm(eps=-1.0), r"eps: expected a number in \[0"),
    (lambda: optim.scale_by_trust_ratio(min_norm=-1.0), r"min_norm: expected a number in \[0"),
    (lambda: optim.scale_by_param_block_rms(min_scale="x"), r"min_scale: expected a number"),
    (lambda: optim.scale_by_sm3(b2=1.5), r"b2: expected a number in \[0, 1\]"),
    (lambda: optim.scale_by_factored_rms(decay_rate_fn=0.8),
     r"decay_rate_fn: expected a function"),
    (lambda: optim.apply_every(0), r"k: expected an int >= 1, got 0"),
    (lambda: optim.lookahead(optim.sgd(0.1), 0, 0.5), r"sync_period: expected an int >= 1"),
    (lambda: optim.lookahead(optim.sgd(0.1), 5, 1.5), r"slow_step_size: expected a number in "
                                                      r"\[0, 1\]"),
    (lambda: optim.MultiSteps(optim.sgd(0.1), 2, accumulator_dtype=torch.int32),
     r"accumulator_dtype: expected a floating"),
    (lambda: optim.MultiSteps(optim.sgd(0.1), 2, should_skip_update_fn=True),
     r"should_skip_update_fn: expected a function"),
])
def test_bad_arguments_of_the_new_optimizers_are_refused(make, match):
    with pytest.raises((TypeError, ValueError), match=match):
        make()


@pytest.mark.parametrize("make, match", [
    (lambda: optim.piecewise_interpolate_schedule("cubic", 1.0), r"interpolate_type: expected "
                                                                 r"one of 'linear', 'cosine'"),
    (lambda: optim.piecewise_interpolate_schedule("linear", 1.0, {5: -1.0}),
     r"boundaries_and_scales\[5\]: expected a number in \[0, inf\)"),
    (lambda: optim.linear_onecycle_schedule(0, 1.0), r"transition_steps: expected a positive"),
    (lambda: optim.cosine_onecycle_schedule(100, 1.0, div_factor=0.0),
     r"div_factor: expected a number in \(0, inf\)"),
    (lambda: optim.warmup_constant_schedule(0.0, 1.0, 2.5), r"transition_steps: expected an int"),
    (lambda: optim.warmup_exponential_decay_schedule(0.0, 1.0, 10, 5, -0.5),
     r"decay_rate: expected a number in \[0"),
    (lambda: optim.sgdr_schedule([{"init_value": 0.0}]), r"cosine_kwargs\[0\]: expected a "
                                                         r"mapping.*decay_steps"),
    (lambda: optim.sgdr_schedule([]), r"cosine_kwargs: expected at least one cycle"),
])
def test_bad_arguments_of_the_new_schedules_are_refused(make, match):
    with pytest.raises((TypeError, ValueError), match=match):
        make()


def test_muon_transform_names_the_param_that_is_not_a_matrix():
    with pytest.raises(ValueError, match=r"params\['fc'\]\['bias'\]: expected a 2-D matrix.*"
                                         r"HINT: optim.muon"):
        optim.scale_by_muon().init(_params())


@pytest.mark.parametrize("opt, match", [
    (optim.polyak_sgd(), r"scale_by_polyak: expected the loss as value=.*HINT"),
    (optim.chain(optim.sgd(0.1), optim.reduce_on_plateau()), r"reduce_on_plateau: expected the "
                                                             r"monitored value as value="),
])
def test_a_missing_value_is_named(opt, match):
    with pytest.raises(ValueError, match=match):
        opt.update(_grads(), opt.init(_params()), _params())


@pytest.mark.parametrize("opt, name", [
    (optim.scale_by_trust_ratio(), "scale_by_trust_ratio"),
    (optim.scale_by_asgd(), "scale_by_asgd"),
    (optim.novograd(0.1), "scale_by_novograd"), (optim.prodigy(), "prodigy"),
    (optim.schedule_free_sgd(), "schedule_free"), (optim.adafactor(), "scale_by_factored_rms"),
    (optim.chain(optim.sgd(0.1), optim.ema_params()), "ema_params"),
])
def test_transforms_that_need_params_say_so(opt, name):
    with pytest.raises(ValueError, match=rf"{name}: expected params, got None.*HINT"):
        opt.update(_grads(), opt.init(_params()))


def test_state_readers_name_what_is_missing():
    state = optim.adam(0.1).init(_params())
    with pytest.raises(ValueError, match=r"averaged_params: state: expected exactly one .* "
                                         r"found 0.*HINT"):
        optim.averaged_params(state)
    with pytest.raises(ValueError, match=r"schedule_free_eval_params: state: expected a "
                                         r"ScheduleFreeState.*HINT"):
        optim.schedule_free_eval_params(state, _params())
    with pytest.raises(TypeError, match=r"lookahead: params: expected LookaheadParams.*HINT"):
        opt = optim.lookahead(optim.sgd(0.1), 2, 0.5)
        opt.update(_grads(), opt.init(_params()), _params())
