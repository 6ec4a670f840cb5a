"""functrain.tree: a thin layer over optree whose errors name the leaf path."""

from __future__ import annotations

import collections

import pytest
import torch

import functrain as ft
from functrain import tree

Pair = collections.namedtuple("Pair", "mu nu")


def test_map_and_leaves_follow_optree_order():
    t = {"b": torch.ones(2), "a": [torch.zeros(1), (torch.ones(3),)]}
    assert [x.shape for x in tree.leaves(t)] == [(1,), (3,), (2,)]
    doubled = tree.map(lambda x, y: x + y, t, t)
    torch.testing.assert_close(doubled["b"], 2 * torch.ones(2))
    paths = tree.map_with_path(lambda p, x: p, t, name="params")
    assert paths == {"b": "params['b']", "a": ["params['a'][0]", ("params['a'][1][0]",)]}


def test_leaves_with_path_names_namedtuple_fields():
    t = {"opt": Pair(mu={"w": torch.ones(1)}, nu={"w": torch.ones(1)})}
    assert [p for p, _ in tree.leaves_with_path(t, "state")] == [
        "state['opt'].mu['w']", "state['opt'].nu['w']"]


@pytest.mark.parametrize("got, message", [
    ({"layers": {"3.weight": torch.ones(32, 64)}},
     r"grads\['layers'\]\['3\.weight'\]: expected shape \(64, 32\), got \(32, 64\)\."),
    ({"layers": {"3.weight": torch.ones(64, 32, dtype=torch.bfloat16)}},
     r"grads\['layers'\]\['3\.weight'\]: expected dtype torch.float32, got torch.bfloat16\."),
    ({"layers": {}}, r"grads\['layers'\]: expected keys \['3\.weight'\], got \[\]; "
                     r"missing \['3\.weight'\]\."),
    ({"layers": {"3.weight": torch.ones(64, 32)}, "extra": torch.ones(1)},
     r"grads: expected keys .*unexpected \['extra'\]"),
    ({"layers": {"3.weight": 1.0}},
     r"grads\['layers'\]\['3\.weight'\]: expected a float32 tensor of shape \(64, 32\), "
     r"got 1\.0\."),
    ({"layers": [torch.ones(64, 32)]}, r"grads\['layers'\]: expected a dict, got a list\."),
])
def test_mismatch_errors_name_the_first_leaf_path(got, message):
    expected = {"layers": {"3.weight": torch.ones(64, 32)}}
    with pytest.raises(tree.TreeMismatchError, match=message):
        tree.assert_trees_match(expected, got, "grads")


def test_sequence_length_and_map_errors():
    with pytest.raises(tree.TreeMismatchError, match=r"x\['a'\]: expected a list of 2 entries, "
                                                      r"got 1\."):
        tree.assert_same_structure({"a": [1, 2]}, {"a": [1]}, "x")
    with pytest.raises(tree.TreeMismatchError, match=r"rest\[0\]: expected keys"):
        tree.map(lambda a, b: a, {"a": 1}, {"b": 1})


def test_device_check_is_opt_in():
    a, b = {"w": torch.ones(1)}, {"w": torch.ones(1, device="meta")}
    tree.assert_trees_match(a, b)
    with pytest.raises(tree.TreeMismatchError, match=r"tree\['w'\]: expected device cpu, got meta"):
        tree.assert_trees_match(a, b, device=True)


def test_cast_zeros_like_global_norm():
    t = {"w": torch.randn(3, 4, dtype=torch.float64), "n": torch.tensor(5), "b": torch.randn(4)}
    c = tree.cast(t, torch.bfloat16)
    assert c["w"].dtype == c["b"].dtype == torch.bfloat16 and c["n"].dtype == torch.int64
    assert tree.cast(t, torch.float16, floating_only=False)["n"].dtype == torch.float16
    assert tree.cast(t, None) is t
    z = tree.zeros_like(t)
    assert all(float(x.abs().sum()) == 0 for x in tree.leaves(z))
    floats = {"w": t["w"], "b": t["b"]}
    ref = torch.linalg.vector_norm(torch.cat([t["w"].flatten(), t["b"].double()]))
    torch.testing.assert_close(tree.global_norm(floats), ref)
    assert tree.global_norm({}).item() == 0.0


def test_leaves_inside_compile_with_empty_dict(compile_counter):
    # dynamo's optree polyfill fails on empty dicts in tree_leaves; functrain works around it
    def f(t):
        new = {"a": t["a"] * 2, "empty": {}, "b": [t["b"]]}
        return sum(x.sum() for x in tree.leaves(new))

    t = {"a": torch.ones(2), "b": torch.ones(3), "e": {}}
    out = torch.compile(f, backend=compile_counter, fullgraph=True)(t)
    assert float(out) == 7.0 and compile_counter.count == 1


def test_namespace_is_functrain():
    assert tree.NAMESPACE == "functrain"
    state = ft.TrainState.create(torch.nn.Linear(1, 1), ft.optim.sgd(0.1))
    assert tree.structure(state).num_leaves == len(tree.leaves(state))


# -- the walk used while torch.compile traces (functrain.tree._traced_map) ------------------


def _parity_trees():
    import collections
    from typing import NamedTuple

    from functrain.precision import DynamicLossScale

    class Pair(NamedTuple):
        a: torch.Tensor
        b: torch.Tensor

    t = torch.arange(3.0)
    state = ft.TrainState.create(torch.nn.Linear(2, 2), ft.optim.adam(1e-3))
    dd = collections.defaultdict(list)
    dd["z"], dd["y"] = t + 1, t + 2
    return {
        "dict, unsorted insertion": {"b": t, "a": t + 1, "c": [t + 2, (t + 3, None)]},
        "mixed key types": {"a": t, 1: t + 1},
        "OrderedDict": collections.OrderedDict([("b", t), ("a", t + 1)]),
        "defaultdict": dd,
        "NamedTuple": Pair(t, t + 1),
        "TrainState": state,
        "DynamicLossScale": {"w": t, "ls": DynamicLossScale(init_scale=8.0)},
        "metrics": {"acc": ft.metrics.Accuracy.from_logits(torch.eye(3), torch.arange(3))},
        "empty containers": {"e": {}, "l": [], "n": None, "w": t},
    }


@pytest.mark.parametrize("name", list(_parity_trees()))
def test_traced_map_and_leaves_agree_with_optree_under_compile(name):
    tree = _parity_trees()[name]
    if name == "defaultdict" and tuple(map(int, torch.__version__.split(".")[:2])) < (2, 10):
        pytest.skip("torch 2.9's Dynamo cannot build a defaultdict inside a compiled function")

    def f(tree):
        doubled = ft.tree.map(lambda x: x * 2 if isinstance(x, torch.Tensor) else x, tree)
        return doubled, ft.tree.leaves(doubled)

    eager_tree, eager_leaves = f(tree)
    torch._dynamo.reset()
    got_tree, got_leaves = torch.compile(f, backend="eager", fullgraph=True)(tree)
    assert type(got_tree) is type(eager_tree)
    assert ft.tree.structure(got_tree) == ft.tree.structure(eager_tree)
    assert len(got_leaves) == len(eager_leaves)
    for a, b in zip(got_leaves, eager_leaves):
        assert (torch.equal(a, b) if isinstance(a, torch.Tensor) else a == b)
    if isinstance(eager_tree, dict):
        assert list(got_tree) == list(eager_tree)  # insertion order kept


@pytest.mark.parametrize("other", [
    {"a": torch.ones(1), "b": torch.ones(1), "c": torch.ones(1)},  # an extra key
    {"a": torch.ones(1), "c": torch.ones(1)},                       # another key
    {"a": torch.ones(1), "b": None},                                # None for a list
])
def test_traced_map_refuses_trees_that_differ(other):
    tree = {"a": torch.ones(1), "b": [torch.ones(1)]}

    def f(x, y):
        return ft.tree.map(lambda a, b: a, x, y)

    with pytest.raises(ValueError):
        f(tree, other)  # optree, eagerly
    torch._dynamo.reset()
    with pytest.raises(Exception, match="differ|ValueError"):
        torch.compile(f, backend="eager", fullgraph=True)(tree, other)
