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
