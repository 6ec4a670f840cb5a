"""fit and evaluate: parity with a hand-written loop, logs, syncs, stops, bad arguments."""

from __future__ import annotations

import copy
import json
import os
import signal

import pytest
import torch
from conftest import count_host_syncs
from torch import nn

import functrain as ft


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 16, bias=False), nn.BatchNorm1d(16), nn.ReLU(),
                         nn.Linear(16, 3))


def _data(n=8, batch=16, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(batch, 6, generator=g), torch.randint(0, 3, (batch,), generator=g))
            for _ in range(n)]


def _step(model):
    def step(state, batch):
        x, y = batch

        def loss_fn(params):
            out, nb = ft.call(model, params, state.buffers, x)
            return nn.functional.cross_entropy(out, y), nb

        grads, (loss, nb) = torch.func.grad_and_value(loss_fn, has_aux=True)(state.params)
        return state.apply_gradients(grads, buffers=nb), {"loss": loss}

    return step


def _eval(model):
    def eval_fn(state, batch):
        x, y = batch
        out, _ = ft.call(model, state.params, state.buffers, x, train=False)
        return {"loss": nn.functional.cross_entropy(out, y),
                "accuracy": ft.metrics.Accuracy.from_logits(out, y)}

    return eval_fn


QUIET = dict(callbacks=[ft.Logging.quiet()])


def quiet(every):
    """No loggers, progress bar or summary; metric windows of ``every`` steps."""
    return dict(callbacks=[ft.Logging.quiet(every)])


def test_fit_matches_hand_written_pytorch_loop():
    """50 steps of fit (compiled) == nn.Module + torch.optim.AdamW on the same data order."""
    model = _model()
    data = _data(10)
    ref = copy.deepcopy(model)
    opt = torch.optim.AdamW(ref.parameters(), lr=1e-2, weight_decay=1e-2)
    for _ in range(5):
        for x, y in data:
            opt.zero_grad()
            nn.functional.cross_entropy(ref(x), y).backward()
            opt.step()
    state = ft.TrainState.create(model, ft.optim.adamw(1e-2, weight_decay=1e-2))
    state = ft.fit(_step(model), state, data, epochs=5, compile="inductor", **QUIET)
    assert int(state.step) == 50
    for k, v in ref.named_parameters():
        torch.testing.assert_close(state.params[k], v.detach(), rtol=1e-4, atol=1e-5, msg=k)
    for k, v in ref.named_buffers():
        torch.testing.assert_close(state.buffers[k], v, rtol=1e-4, atol=1e-5, msg=k)


def test_fit_logs_window_means_and_evaluates(tmp_path):
    model = _model()
    data, val = _data(8), _data(3, seed=2)
    # reference: the same steps run eagerly by hand
    ref_state = ft.TrainState.create(model, ft.optim.sgd(0.05))
    losses = []
    step = _step(model)
    for _ in range(2):
        for b in data:
            ref_state, m = step(ref_state, b)
            losses.append(float(m["loss"]))
    state = ft.TrainState.create(model, ft.optim.sgd(0.05))
    state = ft.fit(step, state, data, epochs=2, eval_fn=_eval(model),
                   eval_loader=val, compile="eager", run_dir=tmp_path,
                   callbacks=[ft.Logging(every=4, progress=False, summary=False)])
    rows = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    train = [r for r in rows if "train/loss" in r]
    assert [r["step"] for r in train] == [4, 8, 12, 16]
    for i, r in enumerate(train):
        assert r["train/loss"] == pytest.approx(sum(losses[4 * i:4 * i + 4]) / 4, rel=1e-5)
    evals = [r for r in rows if "val/accuracy" in r]
    assert [r["step"] for r in evals] == [8, 16]  # end of each epoch (the last is the end)
    expected = ft.evaluate(_eval(model), state, val, compile="eager")
    assert evals[-1]["val/accuracy"] == pytest.approx(expected["accuracy"])
    assert os.path.exists(tmp_path / "metrics.csv")
    assert json.load(open(tmp_path / "hparams.json"))["epochs"] == 2


def test_fit_max_steps_stops_mid_epoch_and_resumes_counting():
    model = _model()
    state = ft.TrainState.create(model, ft.optim.sgd(0.1))
    state = ft.fit(_step(model), state, _data(8), max_steps=5, compile="eager", **QUIET)
    assert int(state.step) == 5
    state = ft.fit(_step(model), state, _data(8), max_steps=5, compile="eager", **QUIET)
    assert int(state.step) == 10


def test_resume_counts_max_steps_from_the_original_start(tmp_path):
    """Resuming a finished run trains nothing more; a larger max_steps extends it, counted
    from the original run's first step (not from the checkpoint)."""
    model = _model()
    loader = ft.data.ArrayLoader(_data(1, batch=64)[0], 16, shuffle=True, seed=2)
    common = dict(compile="eager", run_dir=tmp_path, callbacks=[ft.Checkpointing(4),
                                                                ft.Logging.quiet()])
    state = ft.fit(_step(model), ft.TrainState.create(model, ft.optim.sgd(0.1)), loader,
                   max_steps=6, **common)
    assert int(state.step) == 6
    again = ft.fit(_step(model), ft.TrainState.create(model, ft.optim.sgd(0.1)), loader,
                   max_steps=6, resume="auto", **common)
    assert int(again.step) == 6  # a finished run runs no further step
    for a, b in zip(ft.tree.leaves(again.params), ft.tree.leaves(state.params)):
        assert torch.equal(a, b)
    longer = ft.fit(_step(model), ft.TrainState.create(model, ft.optim.sgd(0.1)), loader,
                    max_steps=10, resume="auto", **common)
    straight = ft.fit(_step(model), ft.TrainState.create(model, ft.optim.sgd(0.1)), loader,
                      max_steps=10, compile="eager", **QUIET)
    assert int(longer.step) == 10
    for a, b in zip(ft.tree.leaves(longer.params), ft.tree.leaves(straight.params)):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_fit_host_syncs_once_per_log_window():
    model = _model()
    snapshots = []

    class Snap(ft.Callback):
        def on_log(self, loop, metrics):
            snapshots.append(dict(counts))

    state = ft.TrainState.create(model, ft.optim.adamw(1e-3))
    with count_host_syncs() as counts:
        ft.fit(_step(model), state, _data(40), epochs=1, compile="inductor",
               callbacks=[Snap(), ft.Logging.quiet(10)])
    # between the first and the last log (steps 10 -> 40: 30 steps) exactly 3 reads happened
    first, last = snapshots[0], snapshots[-1]
    diff = {k: last[k] - first[k] for k in counts}
    assert diff == {**dict.fromkeys(counts, 0), "tolist": 3}, diff


def test_callback_stop_and_sigint_return_last_good_state():
    model = _model()

    class StopAt(ft.Callback):
        def on_log(self, loop, metrics):
            if loop.step >= 6:
                loop.request_stop("enough")

    state = ft.TrainState.create(model, ft.optim.sgd(0.1))
    state = ft.fit(_step(model), state, _data(8), epochs=3, compile="eager",
                   callbacks=[StopAt(), ft.Logging.quiet(3)])
    assert int(state.step) == 6

    class Interrupt(ft.Callback):
        def on_log(self, loop, metrics):
            if loop.step == 4:
                os.kill(os.getpid(), signal.SIGINT)

    state = ft.TrainState.create(model, ft.optim.sgd(0.1))
    state = ft.fit(_step(model), state, _data(8), epochs=3, compile="eager",
                   callbacks=[Interrupt(), ft.Logging.quiet(2)])
    assert int(state.step) == 4  # stopped at the step boundary after the signal
    assert torch.isfinite(state.params["0.weight"]).all()


def test_fit_bad_arguments():
    model = _model()
    step = _step(model)

    def state():
        return ft.TrainState.create(model, ft.optim.sgd(0.1))

    with pytest.raises(ValueError, match="needs epochs or max_steps"):
        ft.fit(step, state(), _data(2), **QUIET)
    with pytest.raises(ValueError, match="loader is empty"):
        ft.fit(step, state(), [], epochs=1, **QUIET)
    with pytest.raises(ValueError, match=r"epochs: expected an int >= 1"):
        ft.fit(step, state(), _data(2), epochs=0, **QUIET)
    with pytest.raises(ValueError, match="precision: expected one of"):
        ft.fit(step, state(), _data(2), epochs=1, precision="bf17", **QUIET)
    with pytest.raises(ValueError, match="eval_fn and eval_loader go together"):
        ft.fit(step, state(), _data(2), epochs=1, eval_fn=_eval(model), **QUIET)
    with pytest.raises(TypeError, match=r"loader: expected an iterable"):
        ft.fit(step, state(), 3, epochs=1, **QUIET)
    with pytest.raises(TypeError, match=r"callbacks\[0\]: expected a functrain.Callback"):
        ft.fit(step, state(), _data(2), epochs=1, callbacks=[print, ft.Logging.quiet()])
    with pytest.raises(ValueError, match="loader yielded no batches in epoch 0"):
        ft.fit(step, state(), iter([]), epochs=1, **QUIET)


def test_settings_are_callbacks_and_the_old_keywords_say_where_they_went(tmp_path):
    import inspect

    model = _model()
    step = _step(model)

    def state():
        return ft.TrainState.create(model, ft.optim.sgd(0.1))

    assert len(inspect.signature(ft.fit).parameters) == 14
    assert isinstance(ft.Logging(), ft.Callback) and isinstance(ft.Checkpointing(2), ft.Callback)
    with pytest.raises(TypeError, match=r"log=False: expected it among the callbacks\. "
                       r"HINT: callbacks=\[ft\.Logging\(every=10\)\]"):
        ft.fit(step, state(), _data(2), epochs=1, log=False)
    with pytest.raises(TypeError, match=r"checkpoint=.*HINT: callbacks=\[ft\.Checkpointing"):
        ft.fit(step, state(), _data(2), epochs=1, checkpoint=ft.Checkpointing(1))
    with pytest.raises(ValueError, match=r"callbacks: expected at most one functrain\.Logging, "
                       r"got 2 \(callbacks\[0\] and callbacks\[2\]\)"):
        ft.fit(step, state(), _data(2), epochs=1,
               callbacks=[ft.Logging.quiet(), ft.Checkpointing(1), ft.Logging()])
    # Among the callbacks, wherever they stand, the settings act: 4 steps, every 2 saved.
    seen = []

    class Record(ft.Callback):
        def on_log(self, loop, metrics):
            seen.append(loop.step)

    ft.fit(step, state(), _data(4), epochs=1, compile="eager", run_dir=tmp_path,
           callbacks=[ft.Checkpointing(2, keep=None), Record(), ft.Logging.quiet(every=2)])
    assert seen == [2, 4]
    saved = ft.checkpoint.CheckpointManager(tmp_path / "checkpoints").all()
    assert [p.name for p in saved] == ["step_000000002", "step_000000004"]


@pytest.mark.parametrize("precision", ["bf16-mixed", "16-mixed"])
def test_fit_mixed_precision_trains_compiled(precision):
    from functrain import precision as mp

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 32), nn.ReLU(), nn.Linear(32, 3))

    def step(state, batch):
        x, y = batch

        def loss_fn(params):
            out, _ = ft.call(model, params, state.buffers, x)
            return nn.functional.cross_entropy(out, y)

        loss, grads = mp.value_and_grad(loss_fn)(state.params,
                                                 loss_scale=mp.get_loss_scale(state))
        return mp.apply_gradients(state, grads), {"loss": loss}

    teacher = torch.randn(6, 3, generator=torch.Generator().manual_seed(3))
    data = [(x, (x @ teacher).argmax(1)) for x, _ in _data(8)]  # learnable labels
    losses = []

    class Record(ft.Callback):
        def on_log(self, loop, metrics):
            losses.append(metrics["train/loss"])

    state = ft.TrainState.create(model, ft.optim.adam(1e-2))
    run = ft.compile_step(step, compile="inductor", precision=precision, on_recompile="raise")
    state = ft.fit(run, state, data, epochs=6, callbacks=[Record(), ft.Logging.quiet(8)])
    assert losses[-1] < 0.8 * losses[0]
    assert all(p.dtype == torch.float32 for p in state.params.values())
    if precision == "16-mixed":
        scale = mp.get_loss_scale(state)
        assert float(scale.loss_scale) == 2.0 ** 16 and int(scale.skipped_steps) == 0


@pytest.mark.parametrize("clip", [False, True])
def test_accumulate_equals_one_step_on_the_concatenated_batch(clip):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 3))
    micro = _data(12, batch=8)  # 12 micro-batches -> 3 updates of 4
    whole = [tuple(torch.cat(parts) for parts in zip(*micro[i:i + 4]))
             for i in range(0, 12, 4)]  # the same examples, 4 micro-batches per batch
    tx = ft.optim.adam(1e-2)
    if clip:  # clipping composes: it sees the accumulated mean gradient
        tx = ft.optim.chain(ft.optim.clip_by_global_norm(0.05), ft.optim.sgd(0.5))
    ref = ft.fit(_step(model), ft.TrainState.create(model, tx), whole, epochs=1,
                 compile="eager", **QUIET)
    multi = ft.optim.MultiSteps(tx, 4)  # accumulation is an optimizer wrapper
    acc = ft.fit(_step(model), ft.TrainState.create(model, multi), micro, epochs=1,
                 compile="inductor", **QUIET)
    assert int(acc.step) == 12 and int(ref.step) == 3
    assert acc.tx is multi
    inner = acc.opt_state.inner_opt_state
    for k in ref.params:
        torch.testing.assert_close(acc.params[k], ref.params[k], rtol=1e-5, atol=1e-6, msg=k)
    ft.tree.assert_trees_match(ref.opt_state, inner, "opt_state")
    if not clip:
        torch.testing.assert_close(inner[0].count, ref.opt_state[0].count)


def _exploding_step(model, at):
    """A step whose loss (and so every gradient) is NaN at step `at` (1-based)."""
    def step(state, batch):
        x, y = batch
        poison = torch.where(state.step + 1 == at, float("nan"), 1.0)

        def loss_fn(params):
            out, _ = ft.call(model, params, state.buffers, x)
            return nn.functional.cross_entropy(out, y) * poison

        grads, loss = torch.func.grad_and_value(loss_fn)(state.params)
        return state.apply_gradients(grads), {"loss": loss}
    return step


def test_nonfinite_guard_raise_stop_skip(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3))
    data = _data(8)
    new = lambda: ft.TrainState.create(model, ft.optim.adam(1e-2))  # noqa: E731
    guard = ft.callbacks.NonFiniteGuard
    with pytest.raises(FloatingPointError, match=r"at step 6: metric train/loss = nan.*HINT"):
        ft.fit(_exploding_step(model, 6), new(), data, epochs=2,
               compile="inductor", callbacks=[guard("raise"), ft.Checkpointing(2),
                                              ft.Logging.quiet(4)], run_dir=tmp_path)
    # nothing already saved is lost: the checkpoint before the bad step restores, finite
    saved = ft.checkpoint.restore(tmp_path / "checkpoints" / "step_000000004", like=new())
    assert int(saved.step) == 4
    assert all(bool(torch.isfinite(p).all()) for p in saved.params.values())
    state = ft.fit(_exploding_step(model, 6), new(), data, epochs=2,
                   compile="eager", callbacks=[guard("stop"), ft.Logging.quiet(4)])
    assert int(state.step) == 8  # stopped at the log window holding step 6
    with pytest.warns(UserWarning, match="skipped the update of a step with non-finite"):
        skipping = ft.TrainState.create(  # skipping the update is an optimizer wrapper
            model, ft.optim.apply_if_finite(ft.optim.adam(1e-2), 10))
        state = ft.fit(_exploding_step(model, 6), skipping, data, epochs=2,
                       compile="inductor", callbacks=[guard("skip"), ft.Logging.quiet(4)])
    assert int(state.step) == 16 and state.tx is not None
    assert all(bool(torch.isfinite(p).all()) for p in state.params.values())
    unchecked = ft.fit(_exploding_step(model, 6), new(), data, epochs=2,
                       compile="eager", **quiet(4))
    assert not all(bool(torch.isfinite(p).all()) for p in unchecked.params.values())
    with pytest.raises(ValueError, match="action: expected one of 'raise', 'stop', 'skip'"):
        guard("ignore")
    with pytest.raises(ValueError, match="NonFiniteGuard needs a runner that checks"):
        ft.fit(ft.compile_step(_exploding_step(model, 6)), new(), data, epochs=1,
               callbacks=[guard(), ft.Logging.quiet()])


def test_nonfinite_guard_adds_no_host_sync_per_step():
    model = _model()
    counts_by_mode = {}
    for mode in (None, "raise"):
        snapshots = []

        class Snap(ft.Callback):
            def __init__(self, into):
                self.into = into

            def on_log(self, loop, metrics):
                self.into.append(dict(counts))

        guards = [ft.callbacks.NonFiniteGuard(mode)] if mode else []
        with count_host_syncs() as counts:
            ft.fit(_step(model), ft.TrainState.create(model, ft.optim.adamw(1e-3)),
                   _data(40), epochs=1, compile="inductor",
                   callbacks=[*[Snap(snapshots)] + guards, ft.Logging.quiet(10)])
        counts_by_mode[mode] = {k: snapshots[-1][k] - snapshots[0][k] for k in counts}
    assert counts_by_mode[None] == counts_by_mode["raise"] == {
        **dict.fromkeys(counts_by_mode[None], 0), "tolist": 3}


def test_evaluate_after_fit_reuses_fits_compiled_evaluation(monkeypatch):
    compiled = []

    def counting(self, gm, example_inputs):  # the runner's path, with no inductor
        self.compiles += 1
        compiled.append(self)
        return gm.forward

    monkeypatch.setattr(ft.CompiledStep, "_compile_graph", counting)
    model = _model()
    eval_fn = _eval(model)
    state = ft.fit(_step(model), ft.TrainState.create(model, ft.optim.sgd(0.1)), _data(2),
                   epochs=1, eval_fn=eval_fn, eval_loader=_data(1), compile="inductor",
                   device="cpu", **QUIET)
    n = len(compiled)  # the step and the evaluation
    # "auto" on the CPU is inductor, "32" the default policy: the same runner, no new compile
    ft.evaluate(eval_fn, state, _data(1), compile="auto")
    assert len(compiled) == n == 2
