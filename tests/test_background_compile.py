"""``compile="auto"`` on a cold CPU start: eager steps while a forked child compiles the step
into the step cache, then the compiled step (functrain/_background.py).

The end-to-end tests start fresh processes with ``FUNCTRAIN_BACKGROUND_COMPILE=1`` (the suite
turns it off elsewhere) and a step no process has compiled before (a random constant in its
code), and judge by counts and states, never by time: the loop of the child process sleeps
between calls so the low-priority compile gets the CPU on a busy machine.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest
import torch

import functrain as ft
from functrain import _background
from functrain.callbacks import Loop, Summary

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CHILD = '''
import json, sys, time
import torch
import functrain as ft

torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.Tanh(), torch.nn.Linear(16, 2))


def step(state, batch):
    x, y = batch

    def loss_fn(params):
        out, _ = ft.call(model, params, state.buffers, x)
        return {scale} * ((out - y) ** 2).mean()

    loss, grads = ft.grad_and_value(loss_fn)(state.params)[::-1]
    {extra}
    return state.apply_gradients(grads), {{"loss": loss}}


g = torch.Generator().manual_seed(0)
batches = [(torch.randn(8, 6, generator=g), torch.randn(8, 2, generator=g)) for _ in range(4)]
if sys.argv[1] == "backward-first":  # as another step's check or compile would have done:
    from torch._subclasses.fake_tensor import FakeTensorMode  # autograd on fake tensors

    with FakeTensorMode():
        torch.func.grad(lambda x: (x * 2).sum())(torch.ones(3))
run = ft.compile_step(step, device="cpu")  # compile="auto"
ref = ft.compile_step(step, compile="eager", device="cpu")
state = ft.TrainState.create(model, ft.optim.sgd(0.05), seed=0)
expected = ft.TrainState.create(model, ft.optim.sgd(0.05), seed=0)
calls, deadline, extra = 0, time.time() + 400, 10
while extra:
    state, _ = run(state, batches[calls % 4])
    if calls == 0:
        dynamo_at_first_call = "torch._dynamo" in sys.modules
    expected, _ = ref(expected, batches[calls % 4])
    calls += 1
    bg = run.background
    if bg.job is None or bg.switched_at is not None or bg.failure or time.time() > deadline:
        extra -= 1  # a few calls after the switch (or the decision), then stop
    else:
        time.sleep(0.01)  # leave the CPU to the background compile
bg = run.background
print(json.dumps({{
    "calls": calls, "compiles": run.compiles, "hits": run.cache_hits,
    "recompiles": run.recompiles, "started": bg.job is not None,
    "eager_calls": bg.eager_calls, "switched_at": bg.switched_at, "failure": bg.failure,
    "foreground": bg.foreground, "note": bg.note, "dynamo_at_first_call": dynamo_at_first_call,
    "max_diff": max(float((a - b).abs().max()) for a, b in
                    zip(ft.tree.leaves(state.params), ft.tree.leaves(expected.params))),
}}))
'''


def _run(tmp_path, mode: str, scale: str, extra: str = "pass") -> dict:
    script = tmp_path / f"child_{scale.replace('.', '_')}.py"
    script.write_text(CHILD.format(scale=scale, extra=extra))
    out = subprocess.run(
        [sys.executable, str(script), mode], capture_output=True, text=True, timeout=600,
        env={**os.environ, "PYTHONPATH": ROOT, "OMP_NUM_THREADS": "2",  # > 1: see below
             "FUNCTRAIN_BACKGROUND_COMPILE": "1"})
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def _fresh_scale() -> str:
    # A constant in the step's code: a step (and a step cache key) no process compiled before.
    return f"{1 + random.random() / 1000:.12f}"


def test_cold_start_runs_eagerly_then_switches_to_the_step_compiled_in_the_background(
        tmp_path):
    scale = _fresh_scale()
    cold = _run(tmp_path, "plain", scale)
    assert cold["started"] and cold["failure"] is None, cold
    assert cold["switched_at"] is not None, cold  # the compile finished within 400 s
    # Every call before the switch ran eagerly; the switch loaded one compiled step.
    assert cold["eager_calls"] == cold["switched_at"] - 1 >= 1
    assert cold["compiles"] == 1 and cold["hits"] == 1 and cold["recompiles"] == []
    assert cold["calls"] == cold["eager_calls"] + 10
    assert cold["note"].startswith("in the background: ")
    # Nothing was ever saved for this step, and the parent knew it without the compiler: its
    # first call ran eagerly before anything imported Dynamo (the child checked the step).
    assert not cold["dynamo_at_first_call"]
    # With 2 threads the child compiles under the parent's thread count (Dynamo guards it: a
    # step compiled with 1 thread would not load) and never runs the step (an OpenMP region
    # with 2 threads hangs in a forked child), so the switch above happened at all.
    # Same training as the eager reference, up to the compiled step's rounding.
    assert cold["max_diff"] < 1e-5

    # The next process finds the step saved: compiled from its first call, no child.
    warm = _run(tmp_path, "plain", scale)
    assert not warm["started"] and warm["note"] is None
    assert warm["compiles"] == 1 and warm["hits"] == 1 and warm["calls"] == 10
    assert warm["max_diff"] < 1e-5 and warm["dynamo_at_first_call"]


def test_a_step_only_eager_can_run_trains_eagerly_on_every_cold_start(tmp_path):
    # The parent skips the check on fake tensors on a surely cold start; the child's check
    # fails (.item() in a compiled step), so the run stays eager and says why, every time:
    # the child marks only a step it could key.
    scale = _fresh_scale()
    for _ in range(2):
        out = _run(tmp_path, "plain", scale, extra="float(loss)")
        assert out["started"] and out["switched_at"] is None and out["compiles"] == 0, out
        assert out["failure"].startswith("the background compile failed (exit code 1: ")
        assert ".item()" in out["failure"] and "reads a tensor's value" in out["failure"]
        assert out["note"] == f"eager: {out['failure']}"
        assert out["max_diff"] == 0.0  # eager calls, as the eager reference's


def test_after_autograd_on_fake_tensors_auto_compiles_in_the_foreground(tmp_path):
    # torch forbids autograd in a child forked after its parent started autograd's device
    # threads, which autograd on fake tensors (functrain's step check, a compile) does.
    out = _run(tmp_path, "backward-first", _fresh_scale())
    assert not out["started"] and out["foreground"].startswith("compiled in the foreground")
    assert out["compiles"] == 1 and out["hits"] == 0 and out["calls"] == 10
    assert out["note"] == out["foreground"]
    assert out["max_diff"] < 1e-5


def test_only_auto_on_a_cpu_with_the_switch_on_has_a_background_plan(monkeypatch):
    def step(state, batch):
        return state, {"n": batch.sum()}

    monkeypatch.setenv("FUNCTRAIN_BACKGROUND_COMPILE", "1")
    assert ft.compile_step(step, device="cpu").background is not None
    assert ft.compile_step(step, compile="inductor", device="cpu").background is None
    assert ft.compile_step(step, compile="eager", device="cpu").background is None
    assert ft.compile_step(step, device="cpu", cache=False).background is None
    assert ft.compile_step(step, device="cpu", steps_per_call=2).background is None
    monkeypatch.setenv("FUNCTRAIN_BACKGROUND_COMPILE", "0")
    assert ft.compile_step(step, device="cpu").background is None


def _wait(job: _background.BackgroundCompile) -> int:
    deadline = time.time() + 60
    while not job.done():
        assert time.time() < deadline, "the child did not exit"
        time.sleep(0.01)
    return job.exit


@pytest.mark.parametrize("work,code", [(lambda m: m == "hello", 0), (lambda m: False, 3),
                                       (lambda m: 1 / 0, 1)])
def test_a_forked_child_runs_its_work_on_the_message_and_reports_by_exit_code(work, code):
    job = _background.BackgroundCompile.fork(work, autograd=False)
    assert job.usable()
    job.go("hello")
    assert _wait(job) == code
    # The log (the child's output) is kept only when the child did not succeed.
    assert os.path.exists(job.log) == (code != 0)
    if code == 1:
        with open(job.log) as f:
            assert "ZeroDivisionError" in f.read()
    if code != 0:
        os.remove(job.log)


def test_a_forked_child_runs_at_the_lowest_priority():
    job = _background.BackgroundCompile.fork(
        lambda m: os.getpriority(os.PRIO_PROCESS, 0) == 19, autograd=False)
    assert job.usable()
    job.go()
    assert _wait(job) == 0


def test_an_evaluation_steps_compile_waits_for_the_training_steps(monkeypatch):
    # fit checks its evaluation step first (the sanity evaluation): its child must not take
    # half the spare CPU (and Inductor's locks) from the training step's compile.
    jobs = []

    class Job(_Compiling):
        log = os.devnull

        def __init__(self):
            self.went, self.finished = False, False
            jobs.append(self)

        def go(self, message=None):
            super().go(message)
            self.went = True

        def done(self):
            if self.finished:
                self.exit = 1  # failed: the training step stays eager, compiles no more
            return self.finished

    monkeypatch.setenv("FUNCTRAIN_BACKGROUND_COMPILE", "1")
    monkeypatch.setattr(_background.BackgroundCompile, "fork",
                        staticmethod(lambda work, autograd=True: Job()))

    def train_step(state, batch):
        return {"w": state["w"] + batch.sum()}, {"n": batch.sum()}

    def eval_step(state, batch):
        return state, {"n": batch.sum() * 2}

    train = ft.compile_step(train_step, device="cpu", donate=False)
    evaluate = ft.CompiledStep(eval_step, device="cpu", train=False, donate=False)
    evaluate.background.go_after(train.background)
    state = {"w": torch.zeros(2)}
    evaluate(state, torch.ones(2))  # before training's first call: it may still compile
    assert len(jobs) == 1 and not jobs[0].went and jobs[0].held  # its work, held
    assert "waited for the training step" in evaluate.background.note
    state, _ = train(state, torch.ones(2))  # training's child starts at once
    assert len(jobs) == 2 and jobs[1].went
    evaluate(state, torch.ones(2))
    assert not jobs[0].went  # training's child still compiles
    jobs[1].finished = True
    state, _ = train(state, torch.ones(2))  # sees its child done (failed: stays eager)
    evaluate(state, torch.ones(2))
    assert jobs[0].went and evaluate.background.eager_calls == 3


def test_fits_evaluation_step_compiles_after_its_training_step(monkeypatch):
    from functrain._evaluate import Evaluator

    monkeypatch.setenv("FUNCTRAIN_BACKGROUND_COMPILE", "1")

    def train_step(state, batch):
        return state, {"n": batch.sum()}

    def eval_step(state, batch):
        return {"n": batch.sum()}

    train = ft.compile_step(train_step, device="cpu")
    evaluator = Evaluator(eval_step, train)  # what fit builds
    assert evaluator.runner.background._after() is train.background


class _Compiling:  # a background compile that never ends
    exit = None
    held = False
    message = None

    def usable(self):
        return True

    def send(self, message=""):
        self.message, self.held = message, True

    def go(self, message=None):
        if message is not None:
            self.send(message)
        self.started, self.held = time.perf_counter(), False

    def done(self):
        return False

    def cancel(self):
        pass


def _never_ending_compiles(monkeypatch, cores):
    monkeypatch.setenv("FUNCTRAIN_BACKGROUND_COMPILE", "1")
    monkeypatch.setattr(_background.BackgroundCompile, "fork",
                        staticmethod(lambda work, autograd=True: _Compiling()))
    monkeypatch.setattr(_background, "_cores", lambda: cores)


@pytest.mark.parametrize("threads,cores,expected", [(3, 4, 3), (3, 3, 2), (3, 2, 1), (1, 1, 1)])
def test_eager_calls_leave_a_core_to_the_compile_when_the_threads_fill_the_cpus(
        monkeypatch, threads, cores, expected):
    seen = []

    def step(state, batch):
        seen.append(torch.get_num_threads())  # runs eagerly
        return {"w": state["w"] + batch.sum()}, {"n": batch.sum()}

    _never_ending_compiles(monkeypatch, cores)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        run = ft.compile_step(step, device="cpu", donate=False)
        state = {"w": torch.zeros(2)}
        for _ in range(3):
            state, _ = run(state, torch.ones(2))
            assert torch.get_num_threads() == threads  # the caller's count between calls
    finally:
        torch.set_num_threads(before)
    assert run.background.eager_calls == 3
    assert seen[-3:] == [expected] * 3


@pytest.mark.parametrize("worth,expected", [(1e9, [2, 2, 2, 2]), (0.0, [2, 2, 1, 1])])
def test_a_run_planned_too_short_for_a_compile_to_pay_off_keeps_its_threads(
        monkeypatch, worth, expected):
    # With a plan, the core is left only once the eager calls so far project more than
    # _WORTH_A_CORE seconds of eager steps still to run (here: measured over 2 calls).
    seen = []

    def step(state, batch):
        seen.append(torch.get_num_threads())
        return {"w": state["w"] + batch.sum()}, {"n": batch.sum()}

    _never_ending_compiles(monkeypatch, cores=2)
    monkeypatch.setattr(_background, "_WORTH_A_CORE", worth)
    monkeypatch.setattr(_background, "_MEASURED_CALLS", 2)
    _run_on_2_threads(step, 4, plan=1000)
    assert seen[-4:] == expected


def _thread_counting_step(seen):
    def step(state, batch):
        seen.append(torch.get_num_threads())
        return {"w": state["w"] + batch.sum()}, {"n": batch.sum()}
    return step


def _calls(run, n, pause=0.0):
    state = {"w": torch.zeros(2)}
    for _ in range(n):
        state, _ = run(state, torch.ones(2))
        time.sleep(pause)


def _run_on_2_threads(step, calls, plan=None, pause=0.0):
    """``calls`` calls of ``step`` through an ``auto`` runner, with 2 intra-op threads."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        run = ft.compile_step(step, device="cpu", donate=False)
        if plan is not None:
            run.background.plan(plan)
        _calls(run, calls, pause)
    finally:
        torch.set_num_threads(before)
    return run


def test_after_a_failed_background_compile_the_eager_calls_keep_every_thread(monkeypatch):
    class Failing(_Compiling):
        log = os.devnull

        def done(self):  # the child exits with an error by the second call
            self.exit = 1
            return True

    seen = []
    _never_ending_compiles(monkeypatch, cores=2)
    monkeypatch.setattr(_background.BackgroundCompile, "fork",
                        staticmethod(lambda work, autograd=True: Failing()))
    run = _run_on_2_threads(_thread_counting_step(seen), 3)
    assert run.background.failure is not None
    assert seen[-3:] == [1, 2, 2]


def test_the_plan_counts_the_time_in_eager_calls_not_between_them(monkeypatch):
    # 0.3 s between calls: counted, 2 calls would project ~15 s for the 98 left.
    seen = []
    _never_ending_compiles(monkeypatch, cores=2)
    monkeypatch.setattr(_background, "_WORTH_A_CORE", 10.0)
    monkeypatch.setattr(_background, "_MEASURED_CALLS", 2)
    _run_on_2_threads(_thread_counting_step(seen), 3, plan=100, pause=0.3)
    assert seen[-3:] == [2, 2, 2]


def test_the_plan_does_not_count_the_first_eager_call(monkeypatch):
    # The first eager call also checks the step (~0.3 s for the main job's; here it sleeps
    # 0.5 s): counted, the mean of 2 calls would project ~25 s for the 98 left, over 10 s.
    seen, real = [], []
    counting = _thread_counting_step(seen)

    def step(state, batch):
        if type(batch).__name__ != "FakeTensor" and not real:  # the first call on data
            real.append(time.sleep(0.5))
        return counting(state, batch)

    _never_ending_compiles(monkeypatch, cores=2)
    monkeypatch.setattr(_background, "_WORTH_A_CORE", 10.0)
    monkeypatch.setattr(_background, "_MEASURED_CALLS", 2)
    _run_on_2_threads(step, 4, plan=100)
    assert seen[-3:] == [2, 2, 2]


def test_one_slow_early_call_does_not_decide_the_plan(monkeypatch):
    # Calls 2-4 are measured; the second sleeps 0.5 s (as copy-on-write faults after a fork
    # can slow early calls). Their mean would project ~16 s for the 96 left, over 10 s; their
    # median does not, and the decision, made once, stays.
    seen, real = [], []
    counting = _thread_counting_step(seen)

    def step(state, batch):
        if type(batch).__name__ != "FakeTensor":
            real.append(None)
            if len(real) == 2:
                time.sleep(0.5)
        return counting(state, batch)

    _never_ending_compiles(monkeypatch, cores=2)
    monkeypatch.setattr(_background, "_WORTH_A_CORE", 10.0)
    monkeypatch.setattr(_background, "_MEASURED_CALLS", 4)
    run = _run_on_2_threads(step, 6, plan=100)
    assert seen[-6:] == [2] * 6 and run.background._worth is False


def test_fit_and_evaluate_tell_the_plan_how_many_calls_their_run_has(monkeypatch):
    _never_ending_compiles(monkeypatch, cores=1)
    model = torch.nn.Linear(3, 1)
    plans = []

    def step(state, x):
        plans.append(run.background.planned)  # runs eagerly: the plan as the step sees it

        def loss_fn(params):
            return ft.call(model, params, state.buffers, x)[0].square().mean()

        loss, grads = ft.grad_and_value(loss_fn)(state.params)[::-1]
        return state.apply_gradients(grads), {"loss": loss}

    run = ft.compile_step(step, device="cpu")
    state = ft.TrainState.create(model, ft.optim.sgd(0.1), seed=0)
    state = ft.fit(run, state, [torch.ones(2, 3)] * 4, max_steps=3,
                   callbacks=[ft.Logging.quiet()])
    assert plans[-3:] == [3] * 3 and run.background.eager_calls == 3
    assert run.background.planned is None  # the plan ended with the run
    state = ft.fit(run, state, [torch.ones(2, 3)] * 4, epochs=2,
                   callbacks=[ft.Logging.quiet()])
    assert plans[-8:] == [3 + 8] * 8 and run.background.eager_calls == 11

    from functrain._evaluate import runner_for

    def eval_fn(state, x):
        plans.append(evaluator.background.planned)
        return {"n": ft.metrics.Mean.from_value(x.sum())}

    # the runner ft.evaluate will use (runners are kept per function and settings)
    evaluator = runner_for(eval_fn, compile="auto", device="cpu", donate=False,
                           precision="32", train=False)
    ft.evaluate(eval_fn, state, [torch.ones(2, 3)] * 5)
    assert plans[-5:] == [5] * 5 and evaluator.background.eager_calls == 5
    assert evaluator.background.planned is None


def test_a_cancelled_child_is_killed_and_leaves_no_log():
    job = _background.BackgroundCompile.fork(lambda m: time.sleep(600) or True, autograd=False)
    job.go()
    job.cancel()
    assert job.done() and job.exit == -signal.SIGKILL
    assert not os.path.exists(job.log)
    with pytest.raises(ChildProcessError):
        os.waitpid(job.pid, os.WNOHANG)  # reaped: no zombie left


def test_a_child_that_is_never_told_to_go_exits_when_its_parent_lets_go():
    job = _background.BackgroundCompile.fork(lambda m: True, autograd=False)
    pid = job.pid
    job._fds()  # what the job's finalizer does when the runner is dropped before `go`
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 1  # never ran its work
    os.remove(job.log)


def _wrote(path, work=lambda m: True):
    def run(message):
        with open(path, "w") as f:
            f.write(message)
        return work(message)
    return run


def test_a_held_child_waits_for_go(tmp_path):
    job = _background.BackgroundCompile.fork(_wrote(tmp_path / "ran"), autograd=False)
    assert job.usable()
    job.send("work")
    assert job.held
    time.sleep(1.5)  # a poll of the child's (1 s) has passed
    assert not job.done() and not (tmp_path / "ran").exists()
    job.go()
    assert not job.held and _wait(job) == 0
    assert (tmp_path / "ran").read_text() == "work"


def test_a_held_child_runs_its_work_when_its_parent_lets_go(tmp_path):
    # The job dropped (its finalizer closes the pipe): the compile goes on for the next start.
    job = _background.BackgroundCompile.fork(_wrote(tmp_path / "ran"), autograd=False)
    job.send("work")
    other = _background.BackgroundCompile.fork(lambda m: True, autograd=False)  # forked
    job._fds()  # after it: it must not keep the first child's pipe open (EOF is the signal)
    assert _wait(job) == 0 and (tmp_path / "ran").read_text() == "work"
    other.cancel()


HELD_AT_EXIT = """
import os, sys
from functrain import _background

def work(message):
    with open(sys.argv[1], "w") as f:
        f.write(message)
    return True

job = _background.BackgroundCompile.fork(work, autograd=False)
job.usable()
job.send("at exit")
os._exit(0)  # the parent ends without `go` (no finalizer runs)
"""


def test_a_held_child_runs_its_work_when_its_parent_ends(tmp_path):
    path = tmp_path / "ran"
    out = subprocess.run([sys.executable, "-c", HELD_AT_EXIT, str(path)], capture_output=True,
                         text=True, timeout=300, env={**os.environ, "PYTHONPATH": ROOT})
    assert out.returncode == 0, out.stderr[-3000:]
    deadline = time.time() + 60
    while not path.exists() or path.read_text() != "at exit":
        assert time.time() < deadline, "the held child did not run after its parent ended"
        time.sleep(0.05)


@pytest.mark.parametrize("threads,cores,worth,held", [
    (2, 2, 1e9, [True, True, True, True]),  # too short for a core: held to the run's end
    (2, 2, 0.0, [True, True, False, False]),  # worth a core: released once decided
    (2, 4, 1e9, [False] * 4)])  # a free CPU: released at once
def test_a_run_too_short_to_give_the_compile_a_core_holds_its_child_to_its_end(
        monkeypatch, capsys, threads, cores, worth, held):
    seen = []

    def step(state, batch):
        if type(batch).__name__ != "FakeTensor":  # not the first call's check
            seen.append(run.background.job.held)  # as each eager call starts
        return {"w": state["w"] + batch.sum()}, {"n": batch.sum()}

    _never_ending_compiles(monkeypatch, cores=cores)
    monkeypatch.setattr(_background, "_WORTH_A_CORE", worth)
    monkeypatch.setattr(_background, "_MEASURED_CALLS", 2)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        run = ft.compile_step(step, device="cpu", donate=False)
        run.background.plan(4)
        _calls(run, 4)
    finally:
        torch.set_num_threads(before)
    assert seen[-4:] == held
    job = run.background.job
    assert job.message is not None  # the work was sent at the first call
    run.background.plan(None)  # the run ends: the child compiles now, for the next start
    assert not job.held
    if held[-1]:
        assert run.background.note == ("eager: 4 eager calls, too few to give the compile a "
                                       "core; the step compiles in the background now, for "
                                       "the next start")
    else:
        assert run.background.note.startswith("eager: the background compile was still")


def test_the_run_summary_says_how_the_background_compile_went(capsys):
    loop = Loop(state=None, step=100, epoch=0)
    loop.compile_note = "eager: the background compile was still running after 3.0 s"
    summary = Summary()
    summary.on_run_start(loop)
    summary.on_run_end(loop)
    assert "compiled" in capsys.readouterr().out.split("eager: the background")[0]
    loop.compiles, loop.compile_note = 1, "in the background: 40 eager calls ..."
    summary.on_run_start(loop)
    summary.on_run_end(loop)
    out = capsys.readouterr().out
    assert "in the background: 40 eager calls" in out and "compile time" in out


FORK_AFTER_FAKE_AUTOGRAD = """
import os, time, torch
from torch._subclasses.fake_tensor import FakeTensorMode
from functrain import _background

with FakeTensorMode():
    torch.func.grad(lambda x: (x * 2).sum())(torch.ones(3))
job = _background.BackgroundCompile.fork(lambda m: True, autograd=True)
usable = job.usable()
deadline = time.time() + 60
while not job.done() and time.time() < deadline:
    time.sleep(0.01)
if os.path.exists(job.log):
    os.remove(job.log)
print(usable, job.exit)
"""


def test_a_forked_child_after_autograd_on_fake_tensors_cannot_run_autograd():
    # The fact the design rests on (torch's rule), checked on this torch, in a new process:
    # in this one, what earlier tests ran decides whether it still holds.
    out = subprocess.run([sys.executable, "-c", FORK_AFTER_FAKE_AUTOGRAD], capture_output=True,
                         text=True, timeout=300, env={**os.environ, "PYTHONPATH": ROOT})
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.split() == ["False", "1"]


def test_the_plan_pickles_as_a_fresh_one():
    # Dynamo may pickle the runner (and so its plan) into a step cache artifact's guards.
    import pickle

    plan = _background.BackgroundSwitch()
    plan.eager_calls, plan.failure = 7, "x"
    copy = pickle.loads(pickle.dumps(plan))
    assert copy.eager_calls == 0 and copy.failure is None and copy.job is None
