"""``compile="auto"`` on a cold CPU start: eager steps while the step compiles elsewhere (private).

A cold compile of a training step costs seconds to minutes (the MNIST-1D example's step:
~7 s on one core of a 2-core CPU, ~8 s more the first time Inductor runs on a machine,
which probes the CPU's vector instructions by compiling test programs); a run shorter than
that is over sooner eagerly. So with ``compile="auto"`` on a CPU, when functrain's step cache
holds no compiled step for this step, the runner does not wait for the compile:

1. it forks a child process (``os.fork``: the child inherits the step, its closure, the state
   and the batch as they are, nothing is pickled), which runs at the lowest CPU priority
   (nice 19), traces, compiles and saves the step into the step cache, and exits. It keeps
   the parent's thread count (Inductor's kernels and Dynamo's guards depend on it, so a step
   compiled with another would not load in the parent) and never runs the step: an OpenMP
   region with more than one thread hangs in a child forked after its parent used OpenMP;
2. meanwhile the steps run eagerly (an eager `functrain.CompiledStep` over the same step).
   Where the process's threads fill every CPU it may use, the nice-19 child gets no CPU at
   all (the README's main job at its default 2 threads on 2 cores trained 20000 eager steps,
   ~60 s, without the child finishing), so the eager calls leave it a core (they run on
   one intra-op thread fewer than the CPUs; the count is back to what it was between calls)
   while the run has more than ``_WORTH_A_CORE`` seconds of eager steps left by its plan
   (`BackgroundSwitch.plan`: the calls left times the median time of eager calls 2 to
   ``_MEASURED_CALLS``, decided once per run: the first call also checks the step, and a
   few slow early calls, after the forks, must not decide it; no plan: always), and not
   after the compile failed.
   A shorter run is over before a compile could pay off, and a core less costs it time
   (the main job, 6000 steps: its eager phase took 16.5-17.1 s instead of 14.7-15.2 s). Its
   child waits (`BackgroundCompile.send`): even starved, a compiling child slowed the run
   (the main job at 2 threads, cold: 17.2/17.2/17.7 s against 16.7/16.7/16.4 s with the
   child idle), and it starts when the run ends (`plan(None)`) or the process does, so
   the next run starts warm. With fewer threads than CPUs the child compiles at once;
   `fit`'s evaluation step, checked first (the sanity evaluation), sends its child to work
   only once the training step's compile is done (`BackgroundSwitch.go_after`), so the step
   that runs thousands of times is not slowed by the one that runs a few times;
3. every call checks (a non-blocking ``waitpid``) whether the child is done; once it is, the
   saved step is loaded from the cache, as a warm start would load it, and the run goes on
   compiled. A child that fails, or an artifact that does not load, leaves the run eager.

Whether the start is cold is asked first without the compiler: the step cache's key includes
the compiler's configs, and both the key and the step's check on fake tensors import Dynamo
and Inductor (~1.15 s of a cold start at 2 threads). So the parent computes the key without
the configs, on the state and batch as they came (`StepCache.prekey`), and where no process
ever computed the full key of that step (`StepCache.keyed`: the child marks it), nothing can
be saved for it: the child keys it and checks it on fake tensors, and the parent runs its
first eager call at once, checked for real (as ``compile="eager"`` checks it). A step whose
check fails in the child (a data-dependent op such as ``.item()``, which only a compiled step
cannot have) is not marked: every cold start of it trains eagerly, with the child's error in
the run summary's note.

A run that ends before the compile does leaves the child running until it has saved the step
(it exits by itself after at most 30 minutes of compiling), so the next start is warm; a second
process starting meanwhile waits for that compile instead of repeating it. The child is forked
at the step's first call, before functrain checks the step on fake tensors: torch forbids
autograd in a child forked after its parent started autograd's device threads, which autograd
on fake tensors does (https://github.com/pytorch/pytorch/wiki/Autograd-and-Fork; plain CPU
backward passes do not). Where the process had done so already (it checked or compiled another
training step: a second `fit` of a new step), ``"auto"`` compiles in the foreground as before.
The step at which a run switches depends on timing, so a cold ``"auto"`` run is not bitwise
reproducible (eager and compiled steps differ in rounding); ``compile="inductor"`` and
``"eager"`` are. A warm start loads the compiled step at its first call, as before.
``FUNCTRAIN_BACKGROUND_COMPILE=0`` turns this off: ``"auto"`` then compiles in the
foreground, like ``"inductor"``.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import statistics
import sys
import tempfile
import time
import traceback
import weakref
from collections.abc import Callable, Iterator
from typing import Any

import torch

from . import _compat
from ._placement import batch_size

__all__ = ["BackgroundCompile", "BackgroundSwitch", "enabled"]

_NOT_SAVED = 3  # the child's exit code when the step compiled but could not be saved
_TIME_LIMIT = 1800  # seconds a background compile may take before it is killed (SIGALRM)
_WORTH_A_CORE = 30.0  # eager seconds left in a run that make a core for the compile pay off
_MEASURED_CALLS = 20  # eager calls timed before that estimate is made


def enabled() -> bool:
    """Whether ``compile="auto"`` may compile in the background (``FUNCTRAIN_BACKGROUND_COMPILE``
    is not ``0``, and this platform can fork)."""
    return os.environ.get("FUNCTRAIN_BACKGROUND_COMPILE", "1") != "0" and hasattr(os, "fork")


class BackgroundCompile:
    """A forked child process that runs ``work(message)`` when told to; poll it with `done`.

    Forked before the parent decides whether it needs the child (`fork`), because a child can
    use autograd only if its parent had not yet started autograd's device threads (see the
    module's docstring); the child says whether it can (`usable`), then waits for its work
    (`send`) or is cancelled. Sent work waits for `go`, or for the parent to let go of the
    child (its end, or the job dropped): then it runs at once, so that a run too short to
    give the compile a CPU still leaves the compiled step to the next one. Work never sent
    never runs.

    Attributes:
        exit: the child's exit code once `done` (``None`` while it runs).
        seconds: how long the child ran, from `go` (set by `done`).
        held: whether work was sent and the child waits for `go`.

    Example:
        >>> job = BackgroundCompile.fork(lambda message: message == "hi", autograd=False)
        >>> job.usable()
        True
        >>> job.go("hi")
        >>> while not job.done():
        ...     time.sleep(0.01)
        >>> job.exit
        0
    """

    def __init__(self, pid: int, log: str, go: int, ready: int) -> None:
        self.pid = pid
        self.log = log
        self.started = time.perf_counter()
        self.exit: int | None = None
        self.seconds: float | None = None
        self.held = False
        self._sent = False
        self._go, self._ready = go, ready
        # Not killed when the parent ends: it finishes its compile (for the next start) and
        # exits; `cancel` kills it.
        self._fds = weakref.finalize(self, _close, go, ready)

    @classmethod
    def fork(cls, work: Callable[[str], bool], autograd: bool = True) -> BackgroundCompile:
        """Fork a child that, once told to `go` with a message, runs ``work(message)`` and
        exits 0 if it returns True, 3 if it returns False, 1 if it raises (the traceback goes
        to its log). ``autograd``: the work needs autograd (the child checks it can)."""
        fd, log = tempfile.mkstemp(prefix="functrain-compile-", suffix=".log")
        go_r, go_w = os.pipe()
        ready_r, ready_w = os.pipe()
        parent = os.getpid()
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:  # the child: never returns
            code = 1
            try:
                for other in (go_w, ready_r, *_GO_ENDS):  # so a parent that lets go of
                    _close(other)  # its other children (its end, a `done`) is seen: EOF
                _become_background(fd)
                ok = not autograd or _autograd_works()
                os.write(ready_w, b"1" if ok else b"0")
                message = _wait_for_work(go_r, parent) if ok else None
                if message is not None:
                    signal.alarm(_TIME_LIMIT)  # a child stuck for any reason ends by itself
                    # The parent's compile workers are not the child's to use. Set only now:
                    # it imports Inductor and Dynamo (~1 s), and the parent waits for `usable`.
                    _compat.compile_in_process()
                    code = 0 if work(message) else _NOT_SAVED
                if code == 0:
                    _remove(log)  # the parent may be gone: nobody else would
            except BaseException:
                traceback.print_exc()
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        try:
            os.setpgid(pid, pid)  # also here: a `cancel` right after the fork kills the group
        except OSError:  # the child got there first (or has exec'd: it never does)
            pass
        for x in (fd, go_r, ready_w):
            os.close(x)
        _GO_ENDS.add(go_w)
        return cls(pid, log, go_w, ready_r)

    def usable(self) -> bool:
        """Whether the child can compile (it can run autograd); waits for its answer (~ms)."""
        return os.read(self._ready, 1) == b"1"

    def send(self, message: str = "") -> None:
        """Give the child its work's ``message`` (under 4 KiB, no NUL): it runs on `go`, or
        when this process lets go of the child."""
        data = message.encode()
        if b"\0" in data or len(data) >= 4096:
            raise ValueError("a background compile's message must be under 4 KiB, no NUL")
        self.held, self._sent = True, True
        with contextlib.suppress(BrokenPipeError):  # the child died: `done` says how
            os.write(self._go, data + b"\0")

    def go(self, message: str | None = None) -> None:
        """Tell the child to run its work now (``message``: `send` it first; none sent
        before: ``""``)."""
        if message is not None or not self._sent:
            self.send(message or "")
        self.started = time.perf_counter()
        self.held = False
        with contextlib.suppress(BrokenPipeError):  # the child died: `done` says how
            os.write(self._go, b"g")

    def done(self) -> bool:
        """Whether the child has exited (a non-blocking check, ~1 µs)."""
        if self.exit is not None:
            return True
        pid, status = os.waitpid(self.pid, os.WNOHANG)
        if pid == 0:
            return False
        self.exit = os.waitstatus_to_exitcode(status)
        self.seconds = time.perf_counter() - self.started
        self._fds()
        if self.exit == 0:
            _remove(self.log)
        return True

    def cancel(self) -> None:
        """Kill the child (and the compiler processes it started) if it still runs."""
        if self.exit is None:
            _stop(self.pid, self.log)
            self.exit = -signal.SIGKILL
        self._fds()


def _cores() -> int:
    """The number of CPUs this process may run on."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def _autograd_works() -> bool:
    try:
        x = torch.ones((), requires_grad=True)
        (x * 2).backward()
    except RuntimeError:  # "Unable to handle autograd's threading in combination with fork"
        return False
    return True


def _wait_for_work(fd: int, parent: int) -> str | None:
    """In the child: the work's message once it may run (`BackgroundCompile.go`, or the
    parent let go of the child: the pipe's end or the parent's), or ``None``: let go before
    any work was sent."""
    data = b""
    while b"\0" not in data:
        chunk = os.read(fd, 4096)
        if not chunk:
            return None
        data += chunk
    message, _, rest = data.partition(b"\0")
    while b"g" not in rest:
        if select.select([fd], [], [], 1.0)[0]:
            rest = os.read(fd, 16)
            if not rest:  # every write end closed: the parent let go
                break
        elif os.getppid() != parent:  # the parent ended (a write end may live on in a
            break  # sibling forked before this pipe's end was tracked)
    return message.decode()


def _last_line(path: str) -> str:
    """The last line of a child's log (its error), shortened; where there is none, a dash."""
    try:
        with open(path, errors="replace") as f:
            lines = [line.strip() for line in f.read()[-4096:].splitlines() if line.strip()]
    except OSError:
        return "-"
    return (lines[-1][:300] + ("..." if len(lines[-1]) > 300 else "")) if lines else "-"


def _become_background(log_fd: int) -> None:
    """In the forked child: its own process group (killed as one, and deaf to the terminal's
    Ctrl-C), output to the log, lowest priority."""
    os.setpgid(0, 0)
    os.dup2(log_fd, 1)
    os.dup2(log_fd, 2)
    # Python's streams too: a notebook's or pytest's replacements write to the parent.
    sys.stdout = open(1, "w", buffering=1, closefd=False)  # noqa: SIM115
    sys.stderr = open(2, "w", buffering=1, closefd=False)  # noqa: SIM115
    os.nice(19)
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_DFL)


def _stop(pid: int, log: str) -> None:
    for kill in (os.killpg, os.kill):  # the group (its compiler processes too), the child
        try:
            kill(pid, signal.SIGKILL)
        except OSError:
            pass
    try:
        os.waitpid(pid, 0)
    except ChildProcessError:
        pass
    _remove(log)


@contextlib.contextmanager
def _locked(path: str) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (released when the process ends, however)."""
    import fcntl

    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield


_GO_ENDS: set[int] = set()  # this process's open write ends of its children's `go` pipes


def _close(*fds: int) -> None:
    for fd in fds:
        _GO_ENDS.discard(fd)
        try:
            os.close(fd)
        except OSError:
            pass


def _remove(path: str) -> None:
    try:
        os.remove(path)
    except OSError:
        pass


class BackgroundSwitch:
    """``compile="auto"``'s plan for one `functrain.CompiledStep`: decide at the first call
    (warm step cache: compiled at once; cold: a `BackgroundCompile` and eager steps), then
    switch to the compiled step when the child has saved it.

    The runner calls `run` at the start of each call while its ``_auto_active`` is set;
    ``None`` means "go on compiled" (and the runner clears the flag).

    Attributes:
        job: the `BackgroundCompile`, or ``None`` (not started: the cache was warm).
        eager: the eager runner of the steps run while compiling.
        eager_calls: calls run eagerly.
        switched_at: the call (1-based) that ran compiled first, or ``None``.
        load_seconds: the time to load the compiled step at the switch.
        failure: why the run stayed eager, or ``None``.
        foreground: why the step compiled in the foreground though its cache was cold.
        planned: the call the current run plans to end at (`plan`), or ``None``.
        started: whether `run` was called (the plan decided, or is deciding, at that call).
    """

    def __init__(self) -> None:
        self.job: BackgroundCompile | None = None
        self.eager: Any = None
        self.eager_calls = 0
        self.switched_at: int | None = None
        self.load_seconds = 0.0
        self.failure: str | None = None
        self.planned: int | None = None
        self.started = False
        self._after: Callable[[], BackgroundSwitch | None] = lambda: None
        self._released_at: int | None = None  # eager calls run when the child was told to go
        self._cores = 0
        self._durations: list[float] = []  # eager calls 2 to _MEASURED_CALLS, seconds
        self._worth: bool | None = None  # this run's decision (module doc, 2.)
        self.foreground: str | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {}  # runtime-only (a process, a runner): Dynamo may pickle the runner holding it

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__()

    @property
    def compiling(self) -> bool:
        """Whether this plan has a background compile to wait for: not yet decided (its
        step's first call has not come), or a child compiling."""
        if not self.started:
            return True
        job = self.job
        return job is not None and self.failure is None and not job.done()

    def go_after(self, plan: BackgroundSwitch) -> None:
        """Start this plan's background compile only once ``plan`` compiles no more (`fit`
        asks it of its evaluation step's plan, for its training step's; held weakly)."""
        self._after = weakref.ref(plan)

    def _release_if_due(self) -> None:
        """Tell the held child to compile now, where it gets a CPU without slowing the run
        (module doc, 2.), and not while the plan this one comes after compiles: `fit` checks
        its evaluation step first (the sanity evaluation), and its training step, which runs
        far more often, would share the spare CPU with that compile (and wait for Inductor's
        locks it holds)."""
        job = self.job
        if job is None or not job.held or self.failure is not None:
            return
        after = self._after()
        if after is not None and after.compiling:
            return
        if torch.get_num_threads() < self._cores or self._worth_a_core():
            job.go()
            self._released_at = self.eager_calls

    def plan(self, calls: int | None) -> None:
        """The run starting now plans ``calls`` more calls (``None``: not known, and how a
        run ends: `fit` and `functrain.evaluate` plan theirs); see the module's docstring, 2."""
        self.planned = None if calls is None else self.eager_calls + calls
        self._worth = None
        self._release_if_due()

    def _worth_a_core(self) -> bool | None:
        """Whether this run's eager calls leave the compile a core (``None``: not decided
        yet); no plan: yes."""
        if self.planned is None:
            return True
        if self._worth is None:  # decided once per run, on the median eager call
            if len(self._durations) < max(_MEASURED_CALLS - 1, 1):
                return None
            per_call = statistics.median(self._durations)
            self._worth = (self.planned - self.eager_calls) * per_call > _WORTH_A_CORE
        return self._worth

    def _leave_a_core(self) -> int | None:
        """The thread count for the next eager call while the child compiles: ``None``, the
        process's own, or one fewer than the CPUs it may use (module doc, 2.)."""
        threads = torch.get_num_threads()
        if (threads < 2 or threads < self._cores or self.failure is not None
                or self.job.held or not self._worth_a_core()):
            return None
        return self._cores - 1

    @property
    def note(self) -> str | None:
        """One line for the run summary (``None``: no background compile happened)."""
        job = self.job
        if job is None:
            return self.foreground
        if self.switched_at is not None:
            return (f"in the background: {self.eager_calls} eager calls while a child process "
                    f"compiled the step ({job.seconds:.1f} s), then compiled (loaded in "
                    f"{self.load_seconds:.1f} s)")
        if self.failure is not None:
            return f"eager: {self.failure}"
        if job.held:
            return "eager: its background compile waited for the training step's"
        if self._released_at == self.eager_calls:
            return (f"eager: {self.eager_calls} eager calls, too few to give the compile a "
                    f"core; the step compiles in the background now, for the next start")
        return (f"eager: the background compile was still running after "
                f"{time.perf_counter() - job.started:.1f} s ({self.eager_calls} eager calls)")

    def run(self, runner: Any, state: Any, batch: Any, window: Any, steps: int) -> Any:
        """Run this call eagerly and return its ``(state, metrics, window)``, or ``None``:
        the runner goes on compiled from this call."""
        self.started = True
        if self.job is None:
            if steps != 1 or not self._start(runner, state, batch, window):
                return None
        elif self.job.held:
            self._release_if_due()
        elif self.failure is None and self.job.done():
            if self._switch(runner, state, batch, window):
                return None
        fewer, threads = self._leave_a_core(), torch.get_num_threads()
        t0 = time.perf_counter()
        if fewer is not None:
            torch.set_num_threads(fewer)
        try:
            out = self.eager._run(state, batch, window, steps)
        finally:
            if fewer is not None:
                torch.set_num_threads(threads)
        if 0 < self.eager_calls < _MEASURED_CALLS:  # not the first: it checks the step
            self._durations.append(time.perf_counter() - t0)
        self.eager_calls += 1
        runner.calls += 1
        runner._checked_state = out[0]
        return out

    def _args(self, runner: Any, state: Any, batch: Any, window: Any) -> tuple[Any, ...]:
        """The compiled step's arguments as its first call would build them."""
        batch = runner.place_batch(batch)
        return runner._prepare(state, batch), batch, runner._adopt(window).metrics

    def _start(self, runner: Any, state: Any, batch: Any, window: Any) -> bool:
        from ._step_cache import in_process_group

        cache = runner._cache
        if runner.device.type != "cpu" or in_process_group():
            return False

        def compile_and_save(message: str) -> bool:
            key, _, how = message.partition("\n")
            args = None
            if how.startswith("unkeyed "):  # keyed here, not by the parent (module doc)
                args = self._args(runner, state, batch, window)
                key = cache.key("_inner", args)
                cache.mark_keyed(how.removeprefix("unkeyed "))
                if key is None:
                    return False
            # One compile per step at a time: a child of another process that is compiling
            # this step already (the previous run's, still finishing) is waited for.
            with _locked(cache.lock_path(key)):
                if how or not cache.saved(key):  # loaded if valid, else compiled anew
                    # Compiled and saved, not run (see the module's docstring).
                    if args is None:
                        args = self._args(runner, state, batch, window)
                    cache.first_call(runner, type(runner)._inner, args)
            return cache.saved(key)

        # Forked first: the checks below run the step on fake tensors, through autograd.
        job = BackgroundCompile.fork(compile_and_save, autograd=runner.train)
        prekey = cache.prekey("_inner", (state, batch))
        if prekey is not None and not cache.keyed(prekey):
            message = "\nunkeyed " + prekey  # surely cold: no check or key here
        else:
            args = self._args(runner, state, batch, window)
            key = cache.key("_inner", args)
            if key is None or cache.unsaveable(key):
                job.cancel()
                return False  # not cacheable: the usual first compiled call
            stale = cache.saved(key)
            if stale and self._load(runner, key, args, state):
                job.cancel()
                return False  # warm: compiled from this call on
            message = key + ("\nstale" if stale else "")  # a stale one is compiled anew
        if not job.usable():
            job.cancel()
            self.foreground = ("compiled in the foreground: this process ran autograd on fake "
                               "tensors before (another step's check or compile), so a forked "
                               "child cannot")
            return False
        job.send(message)
        self.job = job
        self._cores = _cores()
        self._release_if_due()
        self.eager = type(runner)(
            cache.step_fn, compile="eager", device=runner.device, donate=runner.donate,
            on_recompile=runner.on_recompile, return_metrics=runner.return_metrics,
            precision=runner.policy, check_finite=runner.check_finite, train=runner.train,
            cache=False)
        self._status(runner, "compiling in the background")
        return True

    def _switch(self, runner: Any, state: Any, batch: Any, window: Any) -> bool:
        """The child is done: load what it saved and install it in the runner."""
        job = self.job
        self._status(runner, None)
        if job.exit != 0:
            self.failure = ("the background compile could not save the step (run with "
                            "compile='inductor' to see why)" if job.exit == _NOT_SAVED else
                            f"the background compile failed (exit code {job.exit}: "
                            f"{_last_line(job.log)}; its output is in {job.log})")
            return False
        args = self._args(runner, state, batch, window)
        key = runner._cache.key("_inner", args)
        if key is None or not self._load(runner, key, args, state):
            self.failure = "the step compiled in the background did not load"
            return False
        self.switched_at = runner.calls + 1
        return True

    def _load(self, runner: Any, key: str, args: tuple[Any, ...], state: Any) -> bool:
        """Load the step saved under ``key`` into the runner, to run from this call on."""
        t0 = time.perf_counter()
        loaded = runner._cache.load(key, runner, args, type(runner)._inner.__globals__)
        if loaded is None:
            return False
        runner.compiles += 1
        runner.cache_hits += 1
        runner._install(1, loaded)
        runner._calls[1] = 1  # the next call is not a first call: it runs the loaded step
        runner._guards[1].first_batch(args[1], batch_size(args[1]))
        runner._checked_state, runner._carrier = state, args[0]
        self.load_seconds = time.perf_counter() - t0
        runner.compile_time += self.load_seconds
        return True

    @staticmethod
    def _status(runner: Any, text: str | None) -> None:
        report = runner.status
        if report is not None:
            try:
                report(text)
            except Exception:  # a display must never break training
                pass

