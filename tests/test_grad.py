"""`functrain.grad_and_value` against `torch.func.grad_and_value`: the same gradients, values
and aux in eager mode (where it runs on plain autograd), the same compiled graph, and
deferring to torch.func inside other transforms (vmap, grad of grad) and for inputs that
already require grad."""

from __future__ import annotations

import optree
import pytest
import torch
from torch import nn

import functrain as ft


def _is_wrapped(t: torch.Tensor) -> bool:
    return torch._C._functorch.is_gradtrackingtensor(t)


class _Net(nn.Module):
    """Convolutions, BatchNorm (buffers updated in place), and a layer the loss never uses."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv1d(1, 4, 3, stride=2, padding=1)
        self.bn = nn.BatchNorm1d(4)
        self.head = nn.Linear(4 * 6, 3)
        self.unused = nn.Linear(2, 2)

    def forward(self, x):
        return self.head(self.bn(self.conv(x.unsqueeze(1)).relu()).flatten(1))


def _setup(dtype=torch.float64):
    torch.manual_seed(0)
    model = _Net().to(dtype)
    params, buffers = ft.split_module(model)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(8, 12, generator=g, dtype=dtype)
    y = torch.randint(0, 3, (8,), generator=g)
    return model, params, buffers, x, y


def _assert_same(a, b):
    la, sa = optree.tree_flatten(a)
    lb, sb = optree.tree_flatten(b)
    assert sa == sb
    for u, v in zip(la, lb, strict=True):
        if isinstance(u, torch.Tensor):
            assert not u.requires_grad and not _is_wrapped(u)
            assert u.dtype == v.dtype and u.shape == v.shape
            torch.testing.assert_close(u, v, rtol=1e-12, atol=1e-14)
        else:
            assert u == v


def test_eager_equals_torch_func_with_aux_buffers_and_unused_params():
    model, params, buffers, x, y = _setup()
    seen = []

    def loss_fn(params, x, y):
        seen.append(_is_wrapped(params["conv.weight"]))
        logits, new_buffers = ft.call(model, params, buffers, x)
        return nn.functional.cross_entropy(logits, y), (logits, new_buffers)

    got = ft.grad_and_value(loss_fn, has_aux=True)(params, x, y)
    ref = torch.func.grad_and_value(loss_fn, has_aux=True)(params, x, y)
    assert seen == [False, True]  # eager: plain autograd, no functorch wrapper
    _assert_same(got, ref)
    grads = got[0]
    assert list(grads) == list(params)  # same keys, same order
    assert torch.count_nonzero(grads["unused.weight"]) == 0  # unused: zeros, not None
    assert not torch.equal(got[1][1][1]["bn.running_mean"], buffers["bn.running_mean"])


def test_nested_pytree_params_and_argnums_tuple_and_kwargs():
    g = torch.Generator().manual_seed(0)
    p = {"layers": [{"w": torch.randn(3, 3, generator=g)}, {"w": torch.randn(3, 2, generator=g)}],
         "scale": (torch.tensor(2.0),)}
    q = torch.randn(2, generator=g)
    x = torch.randn(5, 3, generator=g)

    def f(p, x, q, *, shift):
        h = (x @ p["layers"][0]["w"]).tanh() @ p["layers"][1]["w"]
        return ((h * p["scale"][0] + q + shift) ** 2).mean()

    for argnums in (0, (0, 2), (2, 0), 2):
        got = ft.grad_and_value(f, argnums=argnums)(p, x, q, shift=0.5)
        ref = torch.func.grad_and_value(f, argnums=argnums)(p, x, q, shift=0.5)
        _assert_same(got, ref)


def test_value_that_does_not_depend_on_the_input_gives_zero_grads():
    w = torch.ones(3)
    got = ft.grad_and_value(lambda w: torch.tensor(2.0))(w)
    ref = torch.func.grad_and_value(lambda w: torch.tensor(2.0))(w)
    _assert_same(got, ref)


def test_keyed_dropout_and_remat_match_torch_func():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Dropout(0.3), nn.Linear(16, 1))
    params, buffers = ft.split_module(model)
    block = ft.remat(lambda p, x: ft.call(model, p, buffers, x, rng=ft.random.key(3))[0])
    x = torch.randn(4, 6)

    def loss_fn(p):
        return block(p, x).square().mean()

    _assert_same(ft.grad_and_value(loss_fn)(params), torch.func.grad_and_value(loss_fn)(params))


def test_inside_vmap_and_grad_it_is_torch_func():
    model, params, buffers, x, y = _setup()
    model.eval()

    def loss_fn(params, x, y):
        out, _ = ft.call(model, params, buffers, x[None])
        return nn.functional.cross_entropy(out, y[None])

    per_ex = torch.func.vmap(ft.grad_and_value(loss_fn), in_dims=(None, 0, 0))(params, x, y)
    ref = torch.func.vmap(torch.func.grad_and_value(loss_fn), in_dims=(None, 0, 0))(params, x, y)
    _assert_same(per_ex, ref)

    # second order (MAML): the outer gradient goes through the inner one
    def batch_loss(params, x, y):
        out, _ = ft.call(model, params, buffers, x)
        return nn.functional.cross_entropy(out, y)

    def inner_then_outer(ft_grad):
        def outer(params):
            g, _ = ft_grad(batch_loss)(params, x[:4], y[:4])
            fast = {k: params[k] - 0.1 * g[k] for k in params}
            return batch_loss(fast, x[4:], y[4:])
        return torch.func.grad(outer)(params)

    _assert_same(inner_then_outer(ft.grad_and_value),
                 inner_then_outer(torch.func.grad_and_value))


def test_an_input_that_requires_grad_keeps_the_outer_graph():
    w = torch.tensor([1.0, 2.0], dtype=torch.float64, requires_grad=True)

    def f(v):
        return (v ** 3).sum()

    g, _ = ft.grad_and_value(f)(w)
    (second,) = torch.autograd.grad(g.sum(), w)  # d/dw sum(3 w^2) = 6 w
    torch.testing.assert_close(second, 6 * w.detach())


def test_compiled_graph_is_torch_funcs():
    model, params, buffers, x, y = _setup(torch.float32)
    graphs = {}

    def capture(name):
        def backend(gm, example_inputs):
            graphs.setdefault(name, []).append(gm)
            return gm.forward
        return backend

    def make_step(grad_and_value):
        def step(params, x, y):
            def loss_fn(p):
                out, _ = ft.call(model, p, buffers, x)
                return nn.functional.cross_entropy(out, y), out
            grads, (loss, out) = grad_and_value(loss_fn, has_aux=True)(params)
            return {k: params[k] - 0.1 * grads[k] for k in params}, loss
        return step

    results = {}
    for name, gv in (("ft", ft.grad_and_value), ("torch.func", torch.func.grad_and_value)):
        torch._dynamo.reset()
        step = torch.compile(make_step(gv), backend=capture(name), fullgraph=True)
        results[name] = step(params, x, y)
        step(params, x, y)
    torch._dynamo.reset()
    assert len(graphs["ft"]) == len(graphs["torch.func"]) == 1  # one graph, no recompile
    assert graphs["ft"][0].code == graphs["torch.func"][0].code
    _assert_same(results["ft"], results["torch.func"])


def test_argument_errors():
    with pytest.raises(TypeError, match="func: expected a callable"):
        ft.grad_and_value(3)
    with pytest.raises(TypeError, match="argnums: expected an int or a non-empty tuple"):
        ft.grad_and_value(len, argnums=[0])
    with pytest.raises(TypeError, match="argnums: expected an int or a non-empty tuple"):
        ft.grad_and_value(len, argnums=True)
    with pytest.raises(TypeError, match="has_aux: expected a bool"):
        ft.grad_and_value(len, has_aux=1)
    w = torch.ones(3)
    with pytest.raises(TypeError, match=r"expected func to return a scalar \(0-d\) tensor, "
                                        r"got a float32 tensor of shape \(3,\)"):
        ft.grad_and_value(lambda w: w * 2)(w)
    with pytest.raises(TypeError, match=r"aux\[1\]\['b'\]: expected a tensor, got 'tag'"):
        ft.grad_and_value(lambda w: (w.sum(), (w, {"b": "tag"})), has_aux=True)(w)
    with pytest.raises(TypeError, match=r"expected func to return a tuple \(value, aux\)"):
        ft.grad_and_value(lambda w: w.sum(), has_aux=True)(w)
    # inputs the eager path does not take go to torch.func, which raises its own errors
    with pytest.raises(Exception):  # noqa: B017 - torch.func's own error type
        ft.grad_and_value(lambda w: w.sum(), argnums=3)(w)
    with pytest.raises(Exception):  # noqa: B017
        ft.grad_and_value(lambda n: n.sum())(torch.ones(3, dtype=torch.int64))
