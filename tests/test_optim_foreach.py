"""The eager foreach path of Adam, scaling and `apply_updates` (`functrain.optim._foreach`):
the same bits as the per-leaf path, close to torch.optim, taken only where it applies; and
`TrainState.apply_gradients`' checks, run once per tree structure, still naming bad leaves."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import functrain as ft
from functrain import optim
from functrain.optim import _foreach


def _params(dtype=torch.float32):
    g = torch.Generator().manual_seed(0)
    # dict order differs from the sorted leaf order on purpose; nested, with a 0-d leaf
    return {"z": torch.randn(4, 3, generator=g, dtype=dtype),
            "a": {"w": torch.randn(5, generator=g, dtype=dtype),
                  "s": torch.randn((), generator=g, dtype=dtype)}}


def _grads(params, step):
    g = torch.Generator().manual_seed(100 + step)
    return ft.tree.map(lambda p: torch.randn(p.shape, generator=g, dtype=p.dtype), params)


def _run(opt, params, steps=6):
    state = opt.init(params)
    for i in range(steps):
        updates, state = opt.update(_grads(params, i), state, params)
        params = optim.apply_updates(params, updates)
    return params, state


@pytest.fixture
def count_foreach(monkeypatch):
    calls = []
    for name in ("adam", "scale", "add", "decay"):
        fn = getattr(_foreach, name)
        monkeypatch.setattr(_foreach, name,
                            lambda *a, _fn=fn, _name=name, **k: calls.append(_name) or _fn(*a, **k))
    return calls


def _per_leaf(monkeypatch):
    monkeypatch.setattr(_foreach, "leaves", lambda *trees: None)


_OPTIMIZERS = {
    "adam": lambda: optim.adam(1e-2),
    "adamw": lambda: optim.adamw(1e-2, weight_decay=0.1),
    "adam_eps_root": lambda: optim.adam(1e-2, eps_root=1e-6),
    "adam_schedule": lambda: optim.adam(optim.cosine_decay_schedule(1e-2, 10)),
    "sgd": lambda: optim.sgd(0.1),
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("name", sorted(_OPTIMIZERS))
def test_foreach_path_gives_the_per_leaf_bits(name, dtype, monkeypatch, count_foreach):
    fast = _run(_OPTIMIZERS[name](), _params(dtype))
    assert "add" in count_foreach and "scale" in count_foreach  # the fast path ran
    assert ("adam" in count_foreach) == name.startswith("adam")
    assert ("decay" in count_foreach) == (name == "adamw")
    _per_leaf(monkeypatch)
    count_foreach.clear()
    slow = _run(_OPTIMIZERS[name](), _params(dtype))
    assert not count_foreach
    fast_leaves, slow_leaves = ft.tree.leaves(fast), ft.tree.leaves(slow)
    assert len(fast_leaves) == len(slow_leaves)
    for a, b in zip(fast_leaves, slow_leaves):
        assert a.dtype == b.dtype and torch.equal(a, b)
    # each output tree keeps its input's dict order (the runner writes back leaf by leaf)
    assert list(fast[0]) == ["z", "a"]
    if name.startswith("adam"):
        assert list(fast[1][0].mu) == ["z", "a"] and list(fast[1][0].nu["a"]) == ["w", "s"]


def _flat_params(dtype=torch.float32):
    """A flat dict of tensors, as `split_module` gives (`_foreach.leaves` reads it without
    optree), in an unsorted key order."""
    g = torch.Generator().manual_seed(1)
    return {"z": torch.randn(4, 3, generator=g, dtype=dtype),
            "a.w": torch.randn(5, generator=g, dtype=dtype),
            "a.s": torch.randn((), generator=g, dtype=dtype)}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("name", ["adam", "adamw", "sgd"])
def test_flat_dict_path_gives_the_per_leaf_bits_and_keeps_key_order(name, dtype, monkeypatch,
                                                                    count_foreach):
    params = _flat_params(dtype)
    found = _foreach.leaves(params, _grads(params, 0))
    assert found is not None and found[1] == [("z", "a.w", "a.s")] * 2  # the key tuple spec
    fast = _run(_OPTIMIZERS[name](), params)
    assert "add" in count_foreach
    _per_leaf(monkeypatch)
    slow = _run(_OPTIMIZERS[name](), _flat_params(dtype))
    for a, b in zip(ft.tree.leaves(fast), ft.tree.leaves(slow)):
        assert a.dtype == b.dtype and torch.equal(a, b)
    assert list(fast[0]) == ["z", "a.w", "a.s"]
    if name.startswith("adam"):
        assert list(fast[1][0].mu) == ["z", "a.w", "a.s"]


def test_leaves_of_dicts_in_other_key_orders_or_nested_go_through_optree():
    params = _flat_params()
    reordered = {k: params[k] + 1 for k in reversed(params)}
    (flat, other), specs = _foreach.leaves(params, reordered)
    for x, y in zip(flat, other):  # paired leaf by leaf, whatever each dict's order
        assert torch.equal(x + 1, y)
    assert list(_foreach.unflatten(specs[1], other)) == list(reordered)  # each keeps its order
    nested = {"a": {"w": torch.ones(2)}, "b": torch.ones(3)}
    (flat,), (spec,) = _foreach.leaves(nested)
    assert len(flat) == 2 and _foreach.unflatten(spec, flat)["a"]["w"] is flat[0]
    assert _foreach.leaves({"a": torch.ones(2), "b": None}) is not None  # None: no leaf
    assert _foreach.leaves({"a": torch.ones(2), "b": 1.0}) is None  # a number leaf
    assert _foreach.leaves({"a": torch.ones(2)}, {"a": torch.ones(3)}) is None  # shapes
    assert _foreach.leaves({"a": torch.ones(2)}, {"b": torch.ones(2)}) is None  # keys
    assert _foreach.leaves({}) is None


def test_number_operands_become_cached_0d_tensors_only_where_the_bits_agree():
    x32 = torch.ones(3)
    t = _foreach._operand(0.999, x32)
    assert isinstance(t, torch.Tensor) and t.dtype == torch.float32 and t.dim() == 0
    assert _foreach._operand(0.999, torch.ones(2)) is t  # cached
    assert _foreach._operand(0.999, x32.double()).dtype == torch.float64
    assert _foreach._operand(0.999, x32.bfloat16()) == 0.999  # half: the number stays
    assert _foreach._operand(True, x32) is True  # (a bool is no number here)
    assert _foreach._operand(2, x32) == 2  # ints stay numbers
    # zeros stay numbers: 0.0 == -0.0 would share an entry, and g * -0.0 is -0.0 for g > 0
    assert _foreach._operand(0.0, x32) == 0.0
    negative_zero = _foreach._operand(-0.0, x32)
    assert not isinstance(negative_zero, torch.Tensor)
    assert torch.equal(torch._foreach_mul([x32], negative_zero)[0].signbit(),
                       torch.ones(3, dtype=torch.bool))
    with torch._subclasses.fake_tensor.FakeTensorMode() as fake:
        fake_leaf = fake.from_tensor(x32)
    assert _foreach._operand(0.999, fake_leaf) == 0.999  # a fake leaf outside its mode
    lr = torch.tensor(0.1)
    assert _foreach._operand(lr, x32) is lr
    # not under a dispatch mode: the runner's dry run on fake tensors must neither cache a fake
    # tensor nor meet a real one
    _foreach._NUMBERS.clear()
    with torch._subclasses.fake_tensor.FakeTensorMode() as fake:
        assert _foreach._operand(0.5, fake.from_tensor(x32)) == 0.5
        _run(optim.adam(1e-2), ft.tree.map(fake.from_tensor, _flat_params()))
    assert not _foreach._NUMBERS
    for i in range(200):  # a number that changes every step does not grow the cache forever
        _foreach._operand(float(i), x32)
    assert len(_foreach._NUMBERS) <= 64


@pytest.mark.parametrize("weight_decay", [None, 0.1])
def test_foreach_adam_matches_torch_optim(weight_decay):
    params = _params(torch.float64)
    if weight_decay is None:
        opt, ref = optim.adam(1e-2), torch.optim.Adam
        kwargs = {}
    else:
        opt, ref = optim.adamw(1e-2, weight_decay=weight_decay), torch.optim.AdamW
        kwargs = {"weight_decay": weight_decay}
    leaves = [p.clone() for p in ft.tree.leaves(params)]
    torch_params = [nn.Parameter(p) for p in leaves]
    torch_opt = ref(torch_params, lr=1e-2, **kwargs)
    state = opt.init(params)
    for i in range(6):
        grads = _grads(params, i)
        updates, state = opt.update(grads, state, params)
        params = optim.apply_updates(params, updates)
        for p, g in zip(torch_params, ft.tree.leaves(grads)):
            p.grad = g
        torch_opt.step()
    for a, b in zip(ft.tree.leaves(params), torch_params):
        torch.testing.assert_close(a, b.detach(), rtol=1e-12, atol=1e-14)


def test_foreach_path_is_skipped_where_it_does_not_apply(count_foreach):
    opt = optim.adam(1e-2)
    params = _params()
    state = opt.init(params)
    grads = _grads(params, 0)
    ref_updates, _ = opt.update(grads, state, params)
    count_foreach.clear()
    # leaves of two dtypes
    mixed = {**params, "z": params["z"].double()}
    opt.update({**grads, "z": grads["z"].double()}, opt.init(mixed), mixed)
    # a param that requires grad (autograd through the update)
    tracked = {**params, "z": params["z"].clone().requires_grad_()}
    opt.update(grads, state, tracked)
    # under a torch.func transform (a vmapped population)
    stacked = ft.tree.map(lambda x: torch.stack([x, x]), (grads, state, params))
    batched, _ = torch.func.vmap(opt.update)(*stacked)
    assert not count_foreach
    for a, b in zip(ft.tree.leaves(batched), ft.tree.leaves(ref_updates)):
        torch.testing.assert_close(a[0], b, rtol=1e-6, atol=1e-7)
    # nesterov keeps its own per-leaf math
    optim.adam(1e-2, nesterov=True).update(grads, state, params)
    assert count_foreach == ["scale"]


def test_foreach_path_still_rejects_bad_updates():
    opt = optim.adam(1e-2)
    params = _params()
    state = opt.init(params)
    bad = {**_grads(params, 0), "z": torch.zeros(3, 4)}
    with pytest.raises(ft.tree.TreeMismatchError, match=r"updates\['z'\]: expected shape"):
        opt.update(bad, state, params)
    with pytest.raises(ft.tree.TreeMismatchError, match=r"updates\['z'\]: expected shape"):
        optim.apply_updates(params, bad)


def test_apply_gradients_checks_once_per_structure_and_still_names_bad_leaves():
    state = ft.TrainState.create(nn.Linear(3, 2), optim.adam(0.1))
    grads = ft.tree.map(torch.ones_like, state.params)
    state = state.apply_gradients(grads)  # checked, then cached
    state = state.apply_gradients(grads)
    wrong_structure = {"weight": grads["weight"]}
    with pytest.raises(ft.tree.TreeMismatchError, match=r"grads: .*missing \['bias'\]"):
        state.apply_gradients(wrong_structure)
    wrong_shape = {**grads, "weight": torch.ones(3, 2)}
    with pytest.raises(ft.tree.TreeMismatchError,
                       match=r"\['weight'\]: expected shape \(2, 3\), got \(3, 2\)"):
        state.apply_gradients(wrong_shape)
    wrong_dtype = {**grads, "bias": torch.ones(2, dtype=torch.float64)}
    with pytest.raises(ft.tree.TreeMismatchError, match=r"\['bias'\]: expected dtype"):
        state.apply_gradients(wrong_dtype)
