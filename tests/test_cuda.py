"""The CUDA paths of the runner, checked against CPU eager runs of the same steps.

Skipped on machines without CUDA. What runs here on a GPU:

* ``compile="auto"`` (inductor with CUDA graphs, the state marked static) and ``"inductor"``:
  per-step losses, batches and final states equal CPU eager ones; one compile; CUDA graphs
  really used (not skipped by inductor, whose reason is reported);
* donation under CUDA graphs: the state is updated in place and every step's loss matches,
  and the per-step metrics a compiled step returns stay readable after the next step;
* fit's pinned-memory prefetch from `functrain.data.ArrayLoader` and ``torch.utils.data``;
* one host transfer per log window;
* ``"bf16-mixed"`` and ``"16-mixed"`` (dynamic loss scale, skipped steps) under autocast on CUDA;
* checkpoints between CUDA and CPU states, fit's asynchronous checkpoints and resume;
* keyed randomness: the same draws and dropout masks on CUDA as on the CPU.

TF32 is off for the whole module, so float32 results differ from the CPU only by rounding.
"""

from __future__ import annotations

import contextlib
import logging
import math
import warnings

import pytest
import torch
import torch.nn.functional as F
from conftest import count_host_syncs
from torch import nn

import functrain as ft
from functrain import precision as mp
from functrain import random as R

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

DEV = "cuda"
AUTO_BACKEND = "cudagraphs"  # what compile="auto" picks on DEV
N, BATCH, EPOCHS = 160, 16, 2  # 10 batches per epoch, 20 steps
STEPS = N // BATCH * EPOCHS
QUIET = dict(callbacks=[ft.Logging.quiet()])


def _runner(step, **options):
    """The step compiled for the GPU, a recompile an error."""
    return ft.compile_step(step, device=DEV, on_recompile="raise", **options)
# float32 on the GPU vs float32 on the CPU (TF32 off): reduction orders differ, nothing else.
F32 = dict(rtol=2e-4, atol=2e-5)
LOSS_REL = 1e-4


@pytest.fixture(autouse=True, scope="module")
def _no_tf32():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # newer torch nudges towards the fp32_precision API
        old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    yield
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


# -- models, data, steps ---------------------------------------------------------------------

def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 32, bias=False), nn.BatchNorm1d(32), nn.ReLU(),
                         nn.Linear(32, 4))


def _mlp(dropout: float = 0.0) -> nn.Module:
    torch.manual_seed(0)
    layers = [nn.Linear(8, 32), nn.ReLU()] + ([nn.Dropout(dropout)] if dropout else [])
    return nn.Sequential(*layers, nn.Linear(32, 4))


def _state(model: nn.Module, lr: float = 1e-2, **kw) -> ft.TrainState:
    return ft.TrainState.create(model, ft.optim.adamw(lr, weight_decay=1e-2), **kw)


def _arrays(seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(N, 8, generator=g)
    teacher = torch.randn(8, 4, generator=g)
    return x, (x @ teacher).argmax(1)  # a learnable task


def _loader(shuffle: bool = True) -> ft.data.ArrayLoader:
    return ft.data.ArrayLoader(_arrays(), BATCH, shuffle=shuffle, seed=3)


def _batches(loader, epochs: int = EPOCHS) -> list:
    """The batches `fit` sees from ``loader`` over ``epochs`` epochs, in order."""
    out = []
    for epoch in range(epochs):
        if hasattr(loader, "set_epoch"):
            loader.set_epoch(epoch)
        out += list(loader)
    return out


def _checks(x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
    """Fingerprints of the batch a step saw: ``ycheck`` is exact in float32, ``xsum`` is not."""
    pos = torch.arange(1, y.shape[0] + 1, device=y.device, dtype=torch.float32)
    return {"xsum": x.sum(), "ycheck": (y.to(torch.float32) * pos).sum()}


def _step(model: nn.Module):
    """A fresh step function (so `fit` builds a fresh runner for it): AdamW + BatchNorm."""
    def step(state, batch):
        x, y = batch

        def loss_fn(params):
            out, nb = ft.call(model, params, state.buffers, x)
            return F.cross_entropy(out, y), nb

        grads, (loss, nb) = torch.func.grad_and_value(loss_fn, has_aux=True)(state.params)
        return state.apply_gradients(grads, buffers=nb), {"loss": loss, **_checks(x, y)}

    return step


def _mp_step(model: nn.Module):
    """The documented mixed-precision step (value_and_grad + apply_gradients)."""
    def step(state, batch):
        x, y = batch

        def loss_fn(params):
            out, _ = ft.call(model, params, state.buffers, x)
            return F.cross_entropy(out.float(), y), out

        (loss, out), grads = mp.value_and_grad(loss_fn, has_aux=True)(
            state.params, loss_scale=mp.get_loss_scale(state))
        low = torch.full((), float(out.dtype != torch.float32), device=x.device)
        return mp.apply_gradients(state, grads), {"loss": loss, "low_precision_forward": low}

    return step


def _dropout_step(model: nn.Module):
    """Keyed dropout: the mask is a function of (state.rng, state.step) only."""
    def step(state, batch):
        x, y = batch
        key = R.fold_in(state.rng, state.step)

        def loss_fn(params):
            out, _ = ft.call(model, params, state.buffers, x, rng=key, train=True)
            return F.cross_entropy(out, y)

        grads, loss = torch.func.grad_and_value(loss_fn)(state.params)
        return state.apply_gradients(grads), {"loss": loss}

    return step


# -- the CPU reference and comparisons ---------------------------------------------------------

def _reference(step, state, batches):
    """Run ``step`` eagerly on the CPU. Returns (per-step metrics as floats, states[0..n])."""
    states, logs = [state], []
    for b in batches:
        state, metrics = step(state, b)  # eager: pure, every step makes new tensors
        logs.append({k: float(v) for k, v in metrics.items()})
        states.append(state)
    return logs, states


def _assert_series(name, got, want, rel=LOSS_REL, abs=1e-6):  # noqa: A002
    assert len(got) == len(want), (
        f"{name}: got {len(got)} values, expected {len(want)} (one per step/window)")
    bad = [i for i, (g, w) in enumerate(zip(got, want)) if g != pytest.approx(w, rel=rel, abs=abs)]
    if bad:
        i = bad[0]
        pytest.fail(
            f"{name}: {len(bad)} of {len(want)} values differ from the CPU eager reference "
            f"(rel={rel}, abs={abs}); first at index {i} (step/window {i + 1}): got {got[i]!r}, "
            f"expected {want[i]!r}.\n  got:      {[round(v, 6) for v in got]}\n"
            f"  expected: {[round(v, 6) for v in want]}", pytrace=False)


def _assert_trees_close(got, want, name="state", **tol):
    got_leaves, want_leaves = ft.tree.leaves_with_path(got, name), ft.tree.leaves(want)
    assert len(got_leaves) == len(want_leaves), f"{name}: leaf counts differ"
    for (path, g), w in zip(got_leaves, want_leaves):
        if isinstance(g, torch.Tensor):
            torch.testing.assert_close(g.detach().cpu(), w.detach().cpu(), **tol,
                                       msg=lambda m, p=path: f"{p} (GPU vs CPU eager): {m}")


def _assert_on(tree, device_type, name="state"):
    wrong = [f"{p} on {x.device}" for p, x in ft.tree.leaves_with_path(tree, name)
             if isinstance(x, torch.Tensor) and x.device.type != device_type]
    assert not wrong, f"expected every tensor on {device_type}, got: {wrong}"


class _Record(ft.Callback):
    """Each log window's metrics (and, if given, the host-sync counts at that point)."""

    def __init__(self, counts=None):
        self.logs: list[tuple[int, dict[str, float]]] = []
        self.counts = counts
        self.sync_snapshots: list[dict[str, int]] = []

    def on_log(self, loop, metrics):
        self.logs.append((loop.step, dict(metrics)))
        if self.counts is not None:
            self.sync_snapshots.append(dict(self.counts))

    def series(self, key):
        return [m[key] for _, m in self.logs]


class _HParams:
    """A logger that keeps fit's hparams (they name the backend and device actually used)."""

    def __init__(self):
        self.params: dict = {}

    def log_hparams(self, params):
        self.params = dict(params)

    def log_metrics(self, metrics, step):
        pass

    def close(self):
        pass


def _count_compiles(monkeypatch):
    """Record (backend, device) of every graph the runners compile from now on."""
    seen: list[tuple[str, str]] = []
    original = ft.CompiledStep._compile_graph

    def counting(self, gm, example_inputs):
        seen.append((self.backend, str(self.device)))
        return original(self, gm, example_inputs)

    monkeypatch.setattr(ft.CompiledStep, "_compile_graph", counting)
    return seen


class _Skips:
    count = 0

    def __init__(self):
        self.messages: list[str] = []

    def report(self):
        return (f"inductor skipped CUDA graphs {self.count} time(s), so compile='auto' ran "
                f"plain inductor kernels; reasons logged: {self.messages or '(none captured)'}. "
                "HINT: every input the graph mutates must be static (mark_static_address), "
                "and the graph must hold no CPU tensors.")


class _ListHandler(logging.Handler):
    def __init__(self, into):
        super().__init__(logging.DEBUG)
        self.into = into

    def emit(self, record):
        self.into.append(record.getMessage())


@contextlib.contextmanager
def _cudagraph_skips():
    """Count inductor's "skipping cudagraphs due to ..." events (and keep their messages)."""
    from torch._dynamo.utils import counters

    out = _Skips()
    log = logging.getLogger("torch._inductor.cudagraph_utils.__cudagraphs")
    handler = _ListHandler(out.messages)
    log.addHandler(handler)
    before = counters["inductor"]["cudagraph_skips"]
    try:
        yield out
    finally:
        out.count = counters["inductor"]["cudagraph_skips"] - before
        log.removeHandler(handler)


# -- 1, 2: compiled steps on CUDA == CPU eager, step by step; one compile; CUDA graphs used ------

def test_fit_auto_on_cuda_matches_cpu_eager_step_by_step(monkeypatch):
    model, loader = _model(), _loader()
    step = _step(model)
    ref, ref_states = _reference(step, _state(model), _batches(loader))
    compiles = _count_compiles(monkeypatch)
    rec, hp = _Record(), _HParams()
    with _cudagraph_skips() as skips:
        state = ft.fit(_runner(step, compile="auto"), _state(model), loader, epochs=EPOCHS,
                       callbacks=[rec, ft.Logging(every=1, loggers=[hp], progress=False,
                                                  summary=False)])
    assert hp.params.get("compile") == AUTO_BACKEND, hp.params
    assert hp.params.get("device", "").startswith(DEV), hp.params
    assert compiles == [(AUTO_BACKEND, hp.params["device"])], (
        f"expected exactly one compile over {EPOCHS} epochs, got {compiles}")
    assert [s for s, _ in rec.logs] == list(range(1, STEPS + 1))
    # Each step saw the right batch (the prefetched, pinned copy of the loader's batch)...
    _assert_series("train/ycheck (exact batch fingerprint)", rec.series("train/ycheck"),
                   [m["ycheck"] for m in ref], rel=0, abs=0)
    _assert_series("train/xsum", rec.series("train/xsum"), [m["xsum"] for m in ref],
                   rel=1e-5, abs=1e-4)
    # ... and ran on the state the previous step left (donated, updated in place).
    _assert_series("train/loss", rec.series("train/loss"), [m["loss"] for m in ref])
    assert int(state.step) == STEPS
    _assert_on(state, DEV)
    _assert_trees_close(state, ref_states[-1], **F32)
    assert skips.count == 0, skips.report()


@pytest.mark.parametrize("compile", ["auto", "inductor"])
def test_compile_step_on_cuda_matches_cpu_eager_and_updates_in_place(compile):
    model = _model()
    step = _step(model)
    batches = _batches(_loader())
    ref, ref_states = _reference(step, _state(model), batches)
    run = ft.compile_step(step, compile=compile, device=DEV, on_recompile="raise")
    assert run.backend == {"auto": AUTO_BACKEND, "inductor": "inductor"}[compile]
    state, losses, checks, ptrs = _state(model), [], [], None
    with _cudagraph_skips() as skips:
        for i, b in enumerate(batches):
            state, metrics = run(state, b)
            # read now: under CUDA graphs the next replay reuses the outputs' memory
            losses.append(float(metrics["loss"]))
            checks.append(float(metrics["ycheck"]))
            if i == 0:
                ptrs = [x.data_ptr() for x in ft.tree.leaves(state)]
        window = run.read_metrics()
    assert run.compiles == 1 and run.recompiles == [], (run.compiles, run.recompiles)
    assert [x.data_ptr() for x in ft.tree.leaves(state)] == ptrs, (
        "the donated state's tensors moved: the step did not update them in place")
    _assert_series("ycheck", checks, [m["ycheck"] for m in ref], rel=0, abs=0)
    _assert_series("loss", losses, [m["loss"] for m in ref])
    mean = sum(m["loss"] for m in ref) / len(ref)
    assert window["loss"] == pytest.approx(mean, rel=LOSS_REL), (window, mean)
    assert int(state.step) == STEPS
    _assert_on(state, DEV)
    _assert_trees_close(state, ref_states[-1], **F32)
    if compile == "auto":
        assert skips.count == 0, skips.report()


def test_step_metrics_kept_unread_across_steps_stay_correct():
    """A caller may keep the metrics dicts and read them later (no sync per step). Under CUDA
    graphs the outputs of one replay live in memory the next replay reuses, so unless the
    runner hands out copies they are overwritten or raise "accessing tensor output of
    CUDAGraphs that has been overwritten by a subsequent run"."""
    model = _model()
    step = _step(model)
    batches = _batches(_loader(), epochs=1)[:6]
    ref, _ = _reference(step, _state(model), batches)
    run = ft.compile_step(step, compile="auto", device=DEV, on_recompile="raise")
    state, kept = _state(model), []
    for b in batches:
        state, metrics = run(state, b)
        kept.append(metrics)
    try:
        losses = [float(m["loss"]) for m in kept]
    except RuntimeError as e:
        pytest.fail(f"reading step i's metrics after step i+1 failed on CUDA: {e}",
                    pytrace=False)
    _assert_series("loss read after the run", losses, [m["loss"] for m in ref])


# -- 3: fit's pinned-memory prefetch from loaders ---------------------------------------------

@pytest.mark.parametrize("pin_memory", [False, True])
def test_fit_on_cuda_with_a_torch_dataloader_sees_every_batch(pin_memory):
    model = _model()
    step = _step(model)
    x, y = _arrays()
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y),
                                         batch_size=BATCH, shuffle=False, pin_memory=pin_memory)
    ref, ref_states = _reference(step, _state(model), _batches(loader))
    rec = _Record()
    state = ft.fit(_runner(step, compile="auto"), _state(model), loader, epochs=EPOCHS,
                   callbacks=[rec, ft.Logging.quiet(1)])
    _assert_series("train/ycheck (exact batch fingerprint)", rec.series("train/ycheck"),
                   [m["ycheck"] for m in ref], rel=0, abs=0)
    _assert_series("train/xsum", rec.series("train/xsum"), [m["xsum"] for m in ref],
                   rel=1e-5, abs=1e-4)
    _assert_series("train/loss", rec.series("train/loss"), [m["loss"] for m in ref])
    _assert_trees_close(state, ref_states[-1], **F32)


# -- 4: host transfers ---------------------------------------------------------------------------

def test_fit_on_cuda_reads_the_device_once_per_log_window():
    model, loader = _model(), _loader()
    step = _step(model)
    ref, _ = _reference(step, _state(model), _batches(loader))
    with count_host_syncs() as counts:
        rec = _Record(counts)
        ft.fit(_runner(step, compile="auto"), _state(model), loader, epochs=EPOCHS,
               callbacks=[rec, ft.Logging.quiet(5)])
    assert [s for s, _ in rec.logs] == [5, 10, 15, 20]
    # between the first and the last log (the compile is before the first): 3 windows
    first, last = rec.sync_snapshots[0], rec.sync_snapshots[-1]
    diff = {k: last[k] - first[k] for k in counts}
    assert diff == {**dict.fromkeys(counts, 0), "tolist": 3}, (
        f"expected one .tolist() per log window of 5 steps and nothing else, got {diff}")
    means = [sum(m["loss"] for m in ref[i:i + 5]) / 5 for i in range(0, STEPS, 5)]
    _assert_series("train/loss window means", rec.series("train/loss"), means)


# -- 5: mixed precision on CUDA ----------------------------------------------------------------

def test_bf16_mixed_on_cuda_trains_close_to_fp32():
    model, loader = _mlp(), _loader()
    epochs = 6
    ref, _ = _reference(_mp_step(model), _state(model), _batches(loader, epochs))
    ref_windows = [sum(m["loss"] for m in ref[i:i + 10]) / 10 for i in range(0, len(ref), 10)]
    rec = _Record()
    state = ft.fit(_runner(_mp_step(model), compile="auto", precision="bf16-mixed"),
                   _state(model), loader, epochs=epochs, callbacks=[rec, ft.Logging.quiet(10)])
    losses = rec.series("train/loss")
    assert rec.series("train/low_precision_forward") == [1.0] * len(losses), (
        "the forward did not run in bfloat16: autocast is not active inside the CUDA step")
    assert all(math.isfinite(v) for v in losses), losses
    assert losses[-1] < 0.8 * losses[0], f"bf16-mixed did not train: {losses}"
    assert all(p.dtype == torch.float32 for p in state.params.values())
    _assert_on(state, DEV)
    # bfloat16 keeps ~3 significant digits: the run tracks the float32 one loosely
    _assert_series("train/loss (bf16-mixed on CUDA vs fp32 on CPU)", losses, ref_windows,
                   rel=0.05, abs=0.01)


def test_16_mixed_on_cuda_scales_the_loss_and_skips_injected_inf_steps():
    model = _mlp()
    policy = mp.Policy.from_name("16-mixed")

    def fresh():
        return policy.prepare_state(_state(model), loss_scale=mp.DynamicLossScale(
            init_scale=2.0**8, growth_interval=3))

    bad = {1, 4}
    batches = [(x * math.inf if i in bad else x, y)
               for i, (x, y) in enumerate(_batches(_loader(), epochs=1)[:8])]
    cpu_step = policy.wrap_step(_mp_step(model), "cpu")
    ref, ref_states = _reference(cpu_step, fresh(), batches)
    ref_scales = [float(mp.get_loss_scale(s).loss_scale) for s in ref_states[1:]]
    assert ref_scales == [256.0, 128.0, 128.0, 128.0, 64.0, 64.0, 64.0, 128.0]  # GradScaler's

    run = ft.compile_step(_mp_step(model), compile="auto", device=DEV, precision="16-mixed",
                          on_recompile="raise")
    state, scales, low = fresh(), [], []
    for i, b in enumerate(batches):
        before = ft.tree.map(torch.clone, (state.params, state.opt_state)) if i in bad else None
        state, metrics = run(state, b)
        low.append(float(metrics["low_precision_forward"]))
        ls = mp.get_loss_scale(state)
        assert isinstance(ls, mp.DynamicLossScale), f"step {i}: extras has {ls!r}"
        scales.append(float(ls.loss_scale))
        if before is not None:  # the skipped update left params and moments bit-identical
            after = (state.params, state.opt_state)
            for (p, a), c in zip(ft.tree.leaves_with_path(before, "(params, opt_state)"),
                                 ft.tree.leaves(after)):
                assert torch.equal(a, c), f"step {i} (inf loss): {p} changed"
    assert run.compiles == 1 and run.recompiles == [], (run.compiles, run.recompiles)
    assert low == [1.0] * len(batches), "the forward did not run in float16 on CUDA"
    assert scales == ref_scales, f"loss scale trajectory {scales}, GradScaler's {ref_scales}"
    ls = mp.get_loss_scale(state)
    _assert_on(ls, DEV, "state.extras['loss_scale']")
    assert (float(ls.loss_scale), int(ls.growth_tracker), int(ls.skipped_steps)) == (
        128.0, 0, 2)
    assert int(state.step) == len(batches)
    assert all(bool(torch.isfinite(p).all()) for p in state.params.values())
    _assert_trees_close(state.params, ref_states[-1].params, "state.params",
                        rtol=1e-2, atol=1e-3)  # float16 autocast on CUDA vs on the CPU


# -- 6: checkpoints ------------------------------------------------------------------------------

def test_checkpoint_moves_between_cuda_and_cpu_states(tmp_path):
    model = _model()
    step = _step(model)
    batches = _batches(_loader(), epochs=1)[:3]
    run = ft.compile_step(step, compile="eager", device=DEV)
    state = _state(model)
    for b in batches:
        state, _ = run(state, b)
    _assert_on(state, DEV)
    ft.checkpoint.save(tmp_path / "from_cuda", state)
    back = ft.checkpoint.restore(tmp_path / "from_cuda", like=_state(model))
    _assert_on(back, "cpu", "restored")
    for (p, a), b in zip(ft.tree.leaves_with_path(back, "restored"), ft.tree.leaves(state)):
        assert torch.equal(a, b.cpu()), f"{p}: CUDA value changed through the checkpoint"

    _, ref_states = _reference(step, _state(model), batches)
    ft.checkpoint.save(tmp_path / "from_cpu", ref_states[-1])
    on_gpu = ft.checkpoint.restore(tmp_path / "from_cpu", like=_state(model, device=DEV))
    _assert_on(on_gpu, DEV, "restored")
    for (p, a), b in zip(ft.tree.leaves_with_path(on_gpu, "restored"),
                         ft.tree.leaves(ref_states[-1])):
        assert torch.equal(a.cpu(), b), f"{p}: CPU value changed through the checkpoint"
    assert on_gpu.tx is not None and int(on_gpu.step) == 3
    # and the restored CUDA state trains on
    more, _ = run(on_gpu, batches[0])
    assert int(more.step) == 4


def test_fit_on_cuda_checkpoints_while_training_and_resumes_exactly(tmp_path):
    model, loader = _model(), _loader()
    step = _step(model)
    _, ref_states = _reference(step, _state(model), _batches(loader))
    run = _runner(step, compile="auto")
    common = dict(callbacks=[ft.Checkpointing(5), ft.Logging.quiet()], run_dir=tmp_path)
    first = ft.fit(run, _state(model), loader, epochs=1, **common)
    ckpts = tmp_path / "checkpoints"
    # step 5 was saved without blocking while step 6 overwrote the (donated) state in place
    at5 = ft.checkpoint.restore(ckpts / "step_000000005", like=_state(model))
    assert int(at5.step) == 5
    _assert_trees_close(at5, ref_states[5], "checkpoint step 5", **F32)
    at10 = ft.checkpoint.restore(ckpts / "step_000000010", like=_state(model))
    for (p, a), b in zip(ft.tree.leaves_with_path(at10, "checkpoint step 10"),
                         ft.tree.leaves(first)):
        assert torch.equal(a, b.cpu()), f"{p}: differs from the state fit returned"
    resumed = ft.fit(run, _state(model), loader, epochs=EPOCHS, resume="auto", **common)
    assert int(resumed.step) == STEPS
    _assert_on(resumed, DEV)
    _assert_trees_close(resumed, ref_states[-1], "resumed", **F32)


# -- 7: keyed randomness -------------------------------------------------------------------------

def test_keys_draws_and_dropout_masks_are_the_same_on_cuda():
    k = R.key(42)
    kg = R.key(42, device=DEV)
    assert kg.device.type == DEV
    # jax.random's numbers (tests/test_random.py), computed on the GPU
    assert R.split(kg, 3).tolist() == [[1832780943, 270669613], [64467757, 2916123636],
                                       [2465931498, 255383827]]
    assert R.bits(kg, (2, 3)).tolist() == [[2098992034, 2919706841, 2646866425],
                                           [2409546199, 1935504149, 2516274904]]
    step = torch.tensor(7, device=DEV)
    for name, draw in [("split", lambda k: R.split(k, 4)),
                       ("fold_in", lambda k: R.fold_in(k, step.to(k.device))),
                       ("bits", lambda k: R.bits(k, (3, 1000))),
                       ("uniform", lambda k: R.uniform(k, (5000,))),
                       ("uniform bf16", lambda k: R.uniform(k, (5000,), torch.bfloat16)),
                       ("bernoulli", lambda k: R.bernoulli(k, 0.3, (5000,))),
                       ("randint", lambda k: R.randint(k, (5000,), 0, 10)),
                       ("permutation", lambda k: R.permutation(k, 2000))]:
        g, c = draw(kg), draw(k)
        assert g.device.type == DEV, name
        assert torch.equal(g.cpu(), c), f"{name}: the CUDA draw differs from the CPU one"
    torch.testing.assert_close(R.normal(kg, (5000,)).cpu(), R.normal(k, (5000,)))

    x = torch.randn(64, 300)
    with R.keyed(R.key(3)):
        y_cpu = F.dropout(x, 0.3)
    with R.keyed(R.key(3, device=DEV)):
        y_gpu = F.dropout(x.to(DEV), 0.3)
    with R.keyed(R.key(3)):  # a CPU key drives a CUDA draw: same mask
        y_mixed = F.dropout(x.to(DEV), 0.3)
    mask = y_cpu != 0
    assert 0.6 < mask.float().mean().item() < 0.8
    assert torch.equal((y_gpu != 0).cpu(), mask), "dropout mask differs between CUDA and CPU"
    assert torch.equal((y_mixed != 0).cpu(), mask), "CPU key + CUDA input: different mask"
    torch.testing.assert_close(y_gpu.cpu(), y_cpu)

    model = _mlp(dropout=0.5)
    params, buffers = ft.split_module(model)
    key = R.fold_in(R.key(5), 11)
    out_cpu, _ = ft.call(model, params, buffers, x[:, :8], rng=key, train=True)
    gpu = ft.tree.map(lambda t: t.to(DEV), (params, buffers))
    out_gpu, _ = ft.call(model, *gpu, x[:, :8].to(DEV), rng=key.to(DEV), train=True)
    torch.testing.assert_close(out_gpu.cpu(), out_cpu, **F32)


def test_compiled_keyed_dropout_step_on_cuda_matches_cpu_eager():
    model = _mlp(dropout=0.5)
    step = _dropout_step(model)
    batches = _batches(_loader(), epochs=1)
    ref, ref_states = _reference(step, _state(model, seed=4), batches)
    assert len({round(m["loss"], 4) for m in ref}) == len(ref)  # a new mask every step
    run = ft.compile_step(step, compile="auto", device=DEV, on_recompile="raise")
    state, losses = _state(model, seed=4), []
    for b in batches:
        state, metrics = run(state, b)
        losses.append(float(metrics["loss"]))
    assert run.compiles == 1, run.recompiles
    # a different mask would move the loss by far more than rounding does
    _assert_series("loss with keyed dropout", losses, [m["loss"] for m in ref])
    _assert_trees_close(state, ref_states[-1], **F32)
