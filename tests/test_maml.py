"""MAML through functrain.optim (examples/maml_sine.py) against a hand-written torch.func MAML."""

from __future__ import annotations

import importlib.util
import os

import pytest
import torch

import functrain as ft

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _example():
    spec = importlib.util.spec_from_file_location("maml_sine",
                                                  os.path.join(ROOT, "examples", "maml_sine.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _reference_maml(model, batches, *, inner_lr, inner_steps, meta_lr):
    """Second-order MAML written directly with torch.func and torch.optim.Adam."""
    params = {k: v.detach().clone().requires_grad_(True) for k, v in model.named_parameters()}
    opt = torch.optim.Adam(params.values(), lr=meta_lr)

    def loss(p, x, y):
        return ((torch.func.functional_call(model, p, (x,)) - y) ** 2).mean()

    def task(p, xs, ys, xq, yq):
        fast = p
        for _ in range(inner_steps):
            g = torch.func.grad(loss)(fast, xs, ys)
            fast = {k: fast[k] - inner_lr * g[k] for k in fast}
        return loss(fast, xq, yq), loss(p, xq, yq)

    def meta(p, xs, ys, xq, yq):
        post, pre = torch.func.vmap(task, in_dims=(None, 0, 0, 0, 0))(p, xs, ys, xq, yq)
        return post.mean(), pre.mean()

    losses = []
    for batch in batches:
        detached = {k: v.detach() for k, v in params.items()}
        grads, (post, pre) = torch.func.grad_and_value(meta, has_aux=True)(detached, *batch)
        for k, v in params.items():
            v.grad = grads[k]
        opt.step()
        losses.append((post.item(), pre.item()))
    return losses, {k: v.detach() for k, v in params.items()}


class _Record(ft.Callback):
    def __init__(self):
        self.logs = []

    def on_log(self, loop, metrics):
        self.logs.append((metrics["train/post_mse"], metrics["train/pre_mse"]))


@pytest.mark.parametrize("shots,inner_steps,compile", [(5, 2, "eager"), (10, 1, "auto")])
def test_maml_with_fit_equals_hand_written_torch_func_maml(shots, inner_steps, compile):
    ex = _example()
    steps = 12
    tasks = ex.SineTasks(meta_batch=4, shots=shots, steps=steps, seed=3)
    torch.manual_seed(0)
    model = ex.make_model()
    ref_losses, ref_params = _reference_maml(model, list(tasks), inner_lr=0.01,
                                             inner_steps=inner_steps, meta_lr=1e-3)
    state = ft.TrainState.create(model, ft.optim.adam(1e-3))
    rec = _Record()
    step = ft.compile_step(ex.maml_step(model, inner_lr=0.01, inner_steps=inner_steps),
                           compile=compile, on_recompile="raise")
    state = ft.fit(step, state, tasks, epochs=1, callbacks=[ft.Logging.quiet(1), rec])
    assert len(rec.logs) == steps
    for (post, pre), (ref_post, ref_pre) in zip(rec.logs, ref_losses):
        assert post == pytest.approx(ref_post, rel=1e-5, abs=1e-5)
        assert pre == pytest.approx(ref_pre, rel=1e-5, abs=1e-5)
    for k in ref_params:
        torch.testing.assert_close(state.params[k], ref_params[k], rtol=1e-4, atol=1e-5)


def test_maml_is_second_order():
    """The meta-gradient differs from the first-order one (inner grads detached)."""
    ex = _example()
    torch.manual_seed(0)
    model = ex.make_model()
    params, _ = ft.split_module(model)
    xs, ys, xq, yq = ex.sample_tasks(torch.Generator().manual_seed(1), 1, 5, 5)

    def meta(p, first_order):
        g = torch.func.grad(lambda q: ex.mse(model, q, xs[0], ys[0]))(p)
        if first_order:
            g = {k: v.detach() for k, v in g.items()}
        return ex.mse(model, {k: p[k] - 0.5 * g[k] for k in p}, xq[0], yq[0])

    second = torch.func.grad(lambda p: ex.mse(model, ex.adapt(
        model, p, xs[0], ys[0], inner_lr=0.5, inner_steps=1), xq[0], yq[0]))(params)
    exact = torch.func.grad(lambda p: meta(p, False))(params)
    first = torch.func.grad(lambda p: meta(p, True))(params)
    for k in params:
        torch.testing.assert_close(second[k], exact[k], rtol=1e-5, atol=1e-6)
    assert any(not torch.allclose(second[k], first[k], rtol=1e-3, atol=1e-5) for k in params)


def test_maml_example_short_run():
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "examples/maml_sine.py", "--shots", "5", "--steps", "30",
         "--compile", "eager"],
        cwd=ROOT, env={**os.environ, "PYTHONPATH": ROOT}, capture_output=True, text=True,
        timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "pre-update" in out.stdout and "MAML (30 steps)" in out.stdout
