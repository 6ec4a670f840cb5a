"""Every schedule against its closed form, in float64."""

from __future__ import annotations

import math

import pytest
import torch

from functrain import optim

COUNTS = range(0, 30)


@pytest.fixture(autouse=True)
def _float64():
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


def _check(schedule, closed_form):
    for t in COUNTS:
        value = schedule(torch.tensor(t))
        assert value.shape == () and value.dtype == torch.float64, t
        assert value.item() == pytest.approx(closed_form(t), rel=1e-13, abs=1e-15), t


def test_constant():
    _check(optim.constant_schedule(0.3), lambda t: 0.3)


def test_linear():
    init, end, steps, begin = 0.5, 0.05, 10, 3

    def closed(t):
        frac = min(max(t - begin, 0), steps) / steps
        return init + (end - init) * frac

    _check(optim.linear_schedule(init, end, steps, transition_begin=begin), closed)


def test_polynomial():
    _check(optim.polynomial_schedule(1.0, 0.1, power=3, transition_steps=20),
           lambda t: 0.9 * (1 - min(t, 20) / 20) ** 3 + 0.1)


def test_zero_transition_steps_is_constant():
    _check(optim.linear_schedule(0.2, 1.0, 0), lambda t: 0.2)
    _check(optim.exponential_decay(0.2, 0, 0.5), lambda t: 0.2)


def test_cosine_decay():
    init, steps, alpha, exponent = 2.0, 20, 0.1, 1.5

    def closed(t):
        cosine = 0.5 * (1 + math.cos(math.pi * min(t, steps) / steps))
        return init * ((1 - alpha) * cosine**exponent + alpha)

    _check(optim.cosine_decay_schedule(init, steps, alpha, exponent), closed)


def test_warmup_cosine_decay():
    init, peak, warmup, total, end = 0.01, 1.0, 5, 25, 0.05

    def closed(t):
        if t < warmup:
            return init + (peak - init) * t / warmup
        k = min(t - warmup, total - warmup)
        return end + (peak - end) * 0.5 * (1 + math.cos(math.pi * k / (total - warmup)))

    _check(optim.warmup_cosine_decay_schedule(init, peak, warmup, total, end), closed)


@pytest.mark.parametrize("staircase", [False, True])
def test_exponential_decay(staircase):
    init, steps, rate, begin, floor = 1.0, 4, 0.5, 2, 0.05

    def closed(t):
        if t <= begin:
            return init
        p = (t - begin) / steps
        p = math.floor(p) if staircase else p
        return max(init * rate**p, floor)

    _check(optim.exponential_decay(init, steps, rate, begin, staircase, end_value=floor), closed)


def test_exponential_growth_with_a_ceiling():
    _check(optim.exponential_decay(1.0, 5, 2.0, end_value=4.0),
           lambda t: min(2.0 ** (t / 5), 4.0))


def test_piecewise_constant():
    def closed(t):
        return 1.0 * (0.5 if t >= 5 else 1.0) * (0.1 if t >= 12 else 1.0)

    _check(optim.piecewise_constant_schedule(1.0, {12: 0.1, 5: 0.5}), closed)


def test_join_schedules():
    schedule = optim.join_schedules(
        [optim.constant_schedule(1.0), optim.linear_schedule(2.0, 0.0, 10),
         optim.constant_schedule(7.0)], boundaries=[5, 20])

    def closed(t):
        if t < 5:
            return 1.0
        if t < 20:
            return 2.0 - 2.0 * min(t - 5, 10) / 10
        return 7.0

    _check(schedule, closed)


def test_schedules_follow_the_default_dtype_and_accept_ints():
    torch.set_default_dtype(torch.float32)
    value = optim.cosine_decay_schedule(1.0, 10)(3)
    assert value.dtype == torch.float32 and value.shape == ()
