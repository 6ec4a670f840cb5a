"""Tests for functrain.metrics: reference parity, merge identity, compile stability, errors."""

from __future__ import annotations

import math
import random

import pytest
import torch
import torch._dynamo.testing

import functrain as ft
from functrain import metrics as M
from functrain.tree import TreeMismatchError


def _equal(a: M.Metric, b: M.Metric) -> bool:
    la, lb = ft.tree.leaves(a), ft.tree.leaves(b)
    return (type(a) is type(b) and len(la) == len(lb)
            and all(x.dtype == y.dtype and torch.equal(x, y) for x, y in zip(la, lb, strict=True)))


def _fold(ms: list[M.Metric]) -> M.Metric:
    acc = M.empty_like(ms[0])
    for m in ms:
        acc = acc.merge(m)
    return acc


# --- reference parity on random sequences ------------------------------------------------------

def test_weighted_mean_matches_reference():
    rng = random.Random(0)
    values = [rng.uniform(-3, 3) for _ in range(37)]
    weights = [rng.randint(1, 64) for _ in range(37)]
    acc = _fold([M.Mean.from_value(torch.tensor(v, dtype=torch.float64), weight=w)
                 for v, w in zip(values, weights, strict=True)])
    ref = sum(v * w for v, w in zip(values, weights, strict=True)) / sum(weights)
    assert acc.compute().item() == pytest.approx(ref, rel=1e-12)


def test_unweighted_and_elementwise_mean():
    g = torch.Generator().manual_seed(1)
    batches = [torch.randn(n, generator=g, dtype=torch.float64) for n in (5, 3, 8, 1)]
    # each 0-d value counts once
    acc = _fold([M.Mean.from_value(b.mean()) for b in batches])
    assert acc.compute().item() == pytest.approx(sum(b.mean().item() for b in batches) / 4)
    # elementwise: mean over all elements, uneven batches weigh by size
    acc = _fold([M.Mean.from_value(b) for b in batches])
    assert acc.compute().item() == pytest.approx(torch.cat(batches).mean().item(), rel=1e-12)
    # elementwise weights (a mask)
    x, w = torch.tensor([1.0, 2.0, 3.0, 4.0]), torch.tensor([1, 0, 1, 0])
    assert M.Mean.from_value(x, weight=w).compute().item() == 2.0


def test_mean_promotes_low_precision_to_float32():
    m = M.Mean.from_value(torch.tensor(1.5, dtype=torch.bfloat16), weight=2)
    assert m.total.dtype == m.weight.dtype == torch.float32
    assert M.Mean.from_value(torch.tensor(3)).total.dtype == torch.float32


def test_sum_matches_reference():
    g = torch.Generator().manual_seed(2)
    xs = [torch.randint(0, 100, (n,), generator=g) for n in (4, 7, 1)]
    acc = _fold([M.Sum.from_value(x) for x in xs])
    assert acc.total.dtype == torch.int64
    assert acc.compute().item() == sum(int(x.sum()) for x in xs)


def test_accuracy_uneven_batches_and_mask():
    g = torch.Generator().manual_seed(3)
    correct = total = 0
    parts = []
    for n in (16, 16, 5, 9):
        logits = torch.randn(n, 4, generator=g)
        labels = torch.randint(0, 4, (n,), generator=g)
        mask = torch.rand(n, generator=g) > 0.3
        parts.append(M.Accuracy.from_logits(logits, labels, mask=mask))
        pred = logits.argmax(-1).tolist()
        for p, y, keep in zip(pred, labels.tolist(), mask.tolist(), strict=True):
            if keep:
                total += 1
                correct += p == y
    acc = _fold(parts)
    assert (acc.correct.item(), acc.total.item()) == (correct, total)
    assert acc.compute().item() == pytest.approx(correct / total)
    # from_predictions agrees with from_logits; sequence (..., C) logits work
    logits = torch.randn(2, 3, 5, generator=g)
    labels = torch.randint(0, 5, (2, 3), generator=g)
    assert _equal(M.Accuracy.from_logits(logits, labels),
                  M.Accuracy.from_predictions(logits.argmax(-1), labels))


def test_std_over_merged_windows_matches_torch_std():
    g = torch.Generator().manual_seed(4)
    # offset by a large constant: the textbook sum-of-squares formula loses digits here
    chunks = [1e4 + torch.randn(n, generator=g) for n in (3, 1, 17, 6, 2)]
    acc = _fold([M.Std.from_value(c) for c in chunks])
    ref = torch.cat(chunks).double().std(unbiased=False).item()
    assert acc.compute().item() == pytest.approx(ref, rel=1e-3)
    # float64 exactness
    chunks = [c.double() for c in chunks]
    acc = _fold([M.Std.from_value(c) for c in chunks])
    assert acc.compute().item() == pytest.approx(
        torch.cat(chunks).std(unbiased=False).item(), rel=1e-10)
    # tree-like merge order gives the same answer
    left = M.Std.from_value(chunks[0]).merge(M.Std.from_value(chunks[1]))
    right = M.Std.from_value(chunks[2]).merge(M.Std.from_value(chunks[3]))
    assert left.merge(right).compute().item() == pytest.approx(
        torch.cat(chunks[:4]).std(unbiased=False).item(), rel=1e-10)


def test_std_mask():
    x = torch.tensor([1.0, 2.0, 4.0, 100.0], dtype=torch.float64)
    m = M.Std.from_value(x, mask=torch.tensor([True, True, True, False]))
    assert m.compute().item() == pytest.approx(x[:3].std(unbiased=False).item())


def test_last_keeps_newest_value():
    vals = [0.5, 0.25, 0.125]
    acc = _fold([M.Last.from_value(torch.tensor(v)) for v in vals])
    assert acc.compute().item() == 0.125 and acc.count.item() == 3
    assert acc.merge(M.Last.empty()).compute().item() == 0.125
    assert M.Last.empty().merge(acc).compute().item() == 0.125
    with pytest.raises(ValueError, match="expected a 0-d tensor"):
        M.Last.from_value(torch.ones(2))


# --- empty is the identity ---------------------------------------------------------------------

SAMPLES = {
    "mean": M.Mean.from_value(torch.tensor([1.0, 2.0, 7.0]), weight=torch.tensor([1.0, 2.0, 0.5])),
    "sum": M.Sum.from_value(torch.tensor([1.5, -2.0])),
    "sum_int": M.Sum.from_value(torch.tensor([1, 2])),
    "accuracy": M.Accuracy.from_predictions(torch.tensor([1, 2, 3]), torch.tensor([1, 0, 3])),
    "last": M.Last.from_value(torch.tensor(-0.3)),
    "std": M.Std.from_value(torch.tensor([0.1, 5.0, -2.3, 7.7])),
}


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_merge_with_empty_is_identity(name):
    x = SAMPLES[name]
    empty = M.empty_like(x)
    assert _equal(empty.merge(x), x)
    assert _equal(x.merge(empty), x)
    assert torch.isfinite(x.compute())


@pytest.mark.parametrize("cls", [M.Mean, M.Accuracy, M.Last, M.Std, M.Sum])
def test_empty_classmethod_is_zeros_and_unaliased(cls):
    e = cls.empty()
    leaves = ft.tree.leaves(e)
    assert all(t.ndim == 0 and t.item() == 0 for t in leaves)
    assert len({t.data_ptr() for t in leaves}) == len(leaves)  # in-place safe


def test_empty_like_dict_of_metrics_and_bare_tensors():
    d = {"loss": torch.tensor(0.7, dtype=torch.float64), "acc": SAMPLES["accuracy"]}
    e = M.empty_like(d)
    assert isinstance(e["loss"], M.Mean) and e["loss"].total.dtype == torch.float64
    assert _equal(e["acc"], M.Accuracy.empty())
    assert ft.tree.structure(e) == ft.tree.structure(M.to_metrics(d))


def test_metrics_are_pytrees_with_named_paths():
    paths = [p for p, _ in ft.tree.leaves_with_path({"loss": M.Mean.empty()}, name="metrics")]
    assert paths == ["metrics['loss'].total", "metrics['loss'].weight"]
    doubled = ft.tree.map(lambda t: 2 * t, M.Mean.from_value(torch.tensor(3.0)))
    assert isinstance(doubled, M.Mean) and doubled.total.item() == 6.0


# --- runner helpers ----------------------------------------------------------------------------

def test_merge_all_and_compute_all_match_reference():
    g = torch.Generator().manual_seed(5)
    acc = None
    losses, ns, correct, total = [], [], 0, 0
    for n in (8, 8, 3):
        x = torch.randn(n, generator=g)
        y = torch.randint(0, 3, (n,), generator=g)
        logits = torch.randn(n, 3, generator=g)
        out = {"loss": x.square().mean(), "acc": M.Accuracy.from_logits(logits, y),
               "lr": M.Last.from_value(torch.tensor(0.1 * n)), "tokens": M.Sum.from_value(y)}
        acc = M.empty_like(out) if acc is None else acc
        acc = M.merge_all(acc, out)
        losses.append(x.square().mean().item())
        ns.append(int(y.sum()))
        correct += int((logits.argmax(-1) == y).sum())
        total += n
    got = M.compute_all(acc)
    assert list(got) == ["loss", "acc", "lr", "tokens"]
    assert all(type(v) is float for v in got.values())
    assert got["loss"] == pytest.approx(sum(losses) / 3, rel=1e-6)
    assert got["acc"] == pytest.approx(correct / total)
    assert got["lr"] == pytest.approx(0.3)
    assert got["tokens"] == sum(ns)
    tensors = M.compute_all_tensors(acc)
    assert all(isinstance(t, torch.Tensor) and t.ndim == 0 for t in tensors.values())
    assert M.compute_all({}) == {}


def test_compute_all_reads_the_device_once(monkeypatch):
    calls = {"tolist": 0, "item": 0}
    orig_tolist, orig_item = torch.Tensor.tolist, torch.Tensor.item

    def tolist(self):
        calls["tolist"] += 1
        return orig_tolist(self)

    def item(self):
        calls["item"] += 1
        return orig_item(self)

    acc = {k: v for k, v in SAMPLES.items()}
    acc["bare"] = torch.tensor(2.0)
    monkeypatch.setattr(torch.Tensor, "tolist", tolist)
    monkeypatch.setattr(torch.Tensor, "item", item)
    out = M.compute_all(acc)
    monkeypatch.undo()
    assert calls == {"tolist": 1, "item": 0}
    assert len(out) == len(acc) and out["bare"] == 2.0
    assert out["sum_int"] == 3.0


def test_compute_of_empty_window():
    out = M.compute_all(M.empty_like({"loss": torch.tensor(1.0), "acc": SAMPLES["accuracy"],
                                      "std": SAMPLES["std"], "lr": SAMPLES["last"]}))
    assert math.isnan(out["loss"]) and math.isnan(out["acc"]) and math.isnan(out["std"])
    assert out["lr"] == 0.0


def test_merge_keeps_accumulator_dtype():
    acc = M.Mean.empty(torch.float32)
    merged = acc.merge(M.Mean.from_value(torch.tensor(1.0, dtype=torch.float64)))
    assert merged.total.dtype == torch.float32


# --- errors ------------------------------------------------------------------------------------

def test_as_metric_error_names_the_key():
    with pytest.raises(TypeError) as e:
        M.to_metrics({"loss": torch.ones(4)})
    assert str(e.value).startswith(
        "metrics['loss']: expected a 0-d tensor or a functrain.metrics metric, "
        "got a float32 tensor of shape (4,).")
    assert "HINT" in str(e.value)
    with pytest.raises(TypeError, match=r"(?s)metrics\['lr'\]: .* got 0\.1\..*HINT"):
        M.to_metrics({"lr": 0.1})
    with pytest.raises(TypeError, match="expected a dict"):
        M.to_metrics([torch.tensor(1.0)])
    with pytest.raises(TypeError, match="expected string keys"):
        M.to_metrics({1: torch.tensor(1.0)})
    assert isinstance(M.as_metric(torch.tensor(3)), M.Mean)
    assert M.as_metric(SAMPLES["std"]) is SAMPLES["std"]


def test_merge_all_structure_errors_name_the_key():
    acc = M.empty_like({"loss": torch.tensor(0.0), "acc": SAMPLES["accuracy"]})
    with pytest.raises(TreeMismatchError, match=r"missing \['acc'\]"):
        M.merge_all(acc, {"loss": torch.tensor(1.0)})
    with pytest.raises(TreeMismatchError,
                       match=r"metrics\['acc'\]: expected Accuracy, got Mean\."):
        M.merge_all(acc, {"loss": torch.tensor(1.0), "acc": torch.tensor(0.5)})


def test_shape_errors():
    with pytest.raises(ValueError, match="logits: expected shape"):
        M.Accuracy.from_logits(torch.randn(4, 3), torch.zeros(5, dtype=torch.long))
    with pytest.raises(ValueError, match="mask: expected the shape"):
        M.Accuracy.from_predictions(torch.zeros(4), torch.zeros(4), mask=torch.ones(3))
    with pytest.raises(TypeError, match="value: expected a tensor"):
        M.Mean.from_value("0.5")


# --- compile stability -------------------------------------------------------------------------

def test_merge_all_compiles_once_without_graph_breaks():
    torch._dynamo.reset()
    counter = torch._dynamo.testing.CompileCounter()

    def step_fn(acc, x, y, logits):
        out = {
            "loss": (x * x).mean(),
            "wmean": M.Mean.from_value(x.mean(), weight=torch.tensor(8.0)),
            "acc": M.Accuracy.from_logits(logits, y, mask=y > 0),
            "lr": M.Last.from_value(x.sum()),
            "std": M.Std.from_value(x),
            "tokens": M.Sum.from_value(y),
        }
        return M.merge_all(acc, out), M.compute_all_tensors(out)

    step = torch.compile(step_fn, backend=counter, fullgraph=True)
    g = torch.Generator().manual_seed(6)
    args = [(torch.randn(8, generator=g), torch.randint(0, 3, (8,), generator=g),
             torch.randn(8, 3, generator=g)) for _ in range(5)]
    acc = ref = M.empty_like({
        "loss": torch.tensor(0.0), "wmean": M.Mean.empty(), "acc": M.Accuracy.empty(),
        "lr": M.Last.empty(), "std": M.Std.empty(), "tokens": M.Sum.empty(torch.int64)})
    for a in args:
        acc, _ = step(acc, *a)
        ref, _ = step_fn(ref, *a)
    assert counter.frame_count == 1
    assert list(acc) == list(ref)
    for k in acc:
        assert type(acc[k]) is type(ref[k])
        for x, y in zip(ft.tree.leaves(acc[k]), ft.tree.leaves(ref[k]), strict=True):
            torch.testing.assert_close(x, y)
    # resetting the accumulator inside a compiled region works too
    reset = torch.compile(M.empty_like, backend=counter, fullgraph=True)
    assert _equal(reset(acc)["std"], M.Std.empty())
