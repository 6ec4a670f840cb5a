"""torchmetrics in an eval_fn that runs eagerly: functional metrics per batch, and a stateful
metric object updated exactly once per batch (no fake-tensor dry run)."""

from __future__ import annotations

import pytest
import torch

import functrain as ft

tm = pytest.importorskip("torchmetrics")


def _setup():
    torch.manual_seed(0)
    model = torch.nn.Linear(5, 3)
    x, y = torch.randn(60, 5), torch.randint(0, 3, (60,))
    state = ft.TrainState.create(model, ft.optim.sgd(0.1))
    return model, state, x, y, ft.data.ArrayLoader((x, y), 20)


def test_functional_torchmetrics_in_an_eager_evaluation_equal_torchmetrics_on_all_data():
    model, state, x, y, loader = _setup()
    from torchmetrics.functional.classification import multiclass_accuracy

    def eval_fn(state, batch):
        logits, _ = state.apply(batch[0], train=False)
        return {"acc": multiclass_accuracy(logits, batch[1], num_classes=3, average="micro")}

    got = ft.evaluate(eval_fn, state, loader, compile="eager")["acc"]
    with torch.no_grad():
        want = multiclass_accuracy(model(x), y, num_classes=3, average="micro").item()
    assert got == pytest.approx(want)  # equal batches: the mean of batch accuracies


def test_a_stateful_torchmetrics_metric_sees_every_batch_once():
    model, state, x, y, loader = _setup()
    f1 = tm.classification.MulticlassF1Score(num_classes=3, average="macro")

    def eval_fn(state, batch):
        logits, _ = state.apply(batch[0], train=False)
        f1.update(logits, batch[1])
        return {}

    ft.evaluate(eval_fn, state, loader, compile="eager")
    with torch.no_grad():
        want = tm.functional.classification.multiclass_f1_score(model(x), y, num_classes=3,
                                                                average="macro")
    assert f1.update_count == 3
    torch.testing.assert_close(f1.compute(), want)
