"""torchmetrics in an eval_fn that runs eagerly: functional metrics per batch, and a stateful
metric object updated exactly once per batch (no fake-tensor dry run); inside a compiled `fit`
through `ft.eager(eval_fn)`."""

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


def test_an_eager_marked_eval_fn_uses_torchmetrics_while_fit_trains_compiled():
    """``eval_fn=ft.eager(eval_fn)``: the evaluation runs eagerly (a stateful torchmetrics
    object, functional F1 and ``.item()`` work) while the training step compiles once."""
    model, state, x, y, loader = _setup()
    f1 = tm.classification.MulticlassF1Score(num_classes=3, average="macro")
    from torchmetrics.functional.classification import multiclass_f1_score

    items = []

    def step(state, batch):
        def loss_fn(params):
            logits, _ = ft.call(model, params, state.buffers, batch[0])
            return torch.nn.functional.cross_entropy(logits, batch[1])

        grads, loss = torch.func.grad_and_value(loss_fn)(state.params)
        return state.apply_gradients(grads), {"loss": loss}

    def eval_fn(state, batch):
        logits, _ = state.apply(batch[0], train=False)
        f1.update(logits, batch[1])
        items.append(logits.argmax(1).sum().item())  # a host read: eager only
        return {"f1": multiclass_f1_score(logits, batch[1], num_classes=3, average="macro")}

    runner = ft.compile_step(step, compile="inductor")
    state = ft.fit(runner, state, loader, epochs=2, eval_fn=ft.eager(eval_fn),
                   eval_loader=loader, callbacks=[ft.Logging.quiet(every=3)])
    assert runner.compiles == 1 and runner.backend == "inductor"  # training compiled, once
    # evaluations: the sanity one (2 batches), after each of the 2 epochs (3 batches each)
    assert f1.update_count == 2 + 3 + 3 and len(items) == 8
    f1.reset()
    ft.evaluate(ft.eager(eval_fn), state, loader, compile="inductor")  # the marker wins
    with torch.no_grad():
        trained = torch.nn.Linear(5, 3)
        trained.load_state_dict(ft.checkpoint.export_weights(state))
        want = multiclass_f1_score(trained(x), y, num_classes=3, average="macro")
    torch.testing.assert_close(f1.compute(), want)


def test_without_the_marker_a_compiled_evaluation_explains_the_torchmetrics_failure():
    model, state, x, y, loader = _setup()
    from torchmetrics.functional.classification import multiclass_f1_score

    def eval_fn(state, batch):
        logits, _ = state.apply(batch[0], train=False)
        return {"f1": multiclass_f1_score(logits, batch[1], num_classes=3, average="macro")}

    with pytest.raises(Exception, match="ft.eager|functrain.eager"):
        ft.evaluate(eval_fn, state, loader, compile="inductor")
