"""The first-run checks: loss.backward() in a step, dropped buffers, data-dependent ops."""

from __future__ import annotations

import re

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from functrain._step_checks import explain_data_dependent, no_backward


def test_backward_inside_the_check_says_to_use_torch_func_grad():
    w = torch.ones(3, requires_grad=True)
    with pytest.raises(RuntimeError, match=r"step_fn called loss.backward\(\)(.|\n)*"
                                           r"torch.func.grad_and_value"):
        with no_backward():
            (w * w).sum().backward()
    with pytest.raises(RuntimeError, match="called loss.backward"):
        with no_backward():
            torch.autograd.backward((w * 2).sum())
    with no_backward():  # everything else passes through, torch.func.grad included
        g = torch.func.grad(lambda v: (v ** 2).sum())(w.detach())
    assert torch.equal(g, 2 * torch.ones(3))


def _raised(fn):
    try:
        with FakeTensorMode():
            fn(torch.ones(4, dtype=torch.long))
    except Exception as e:  # noqa: BLE001 - the test inspects it
        return e
    raise AssertionError("no error")


@pytest.mark.parametrize("fn, match", [
    (lambda x: x.sum().item(), r"\.item\(\) \(aten._local_scalar_dense.default\) reads a "
                               r"tensor's value on the host"),
    (lambda x: float(x.sum()), r"reads a tensor's value on the host"),
    (lambda x: bool(x.sum() > 1), r"reads a tensor's value on the host"),
    (lambda x: torch.bincount(x), r"aten.bincount.default returns a tensor whose shape depends"),
    (lambda x: torch.nonzero(x), r"aten.nonzero.default returns a tensor whose shape depends"),
])
def test_data_dependent_ops_get_an_explanation_naming_the_op(fn, match):
    explained = explain_data_dependent(_raised(fn))
    assert explained is not None
    text = str(explained)
    assert text.startswith("step_fn: ")
    assert re.search(match, text), text
    assert "compile='eager'" in text and "functrain.metrics" in text


def test_other_errors_are_left_alone():
    assert explain_data_dependent(ValueError("x")) is None
    assert explain_data_dependent(RuntimeError("shape mismatch")) is None
