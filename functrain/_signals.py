"""Stop a run cleanly on SIGINT/SIGTERM: at the next step boundary, not mid-step."""

from __future__ import annotations

import signal
import threading
from typing import Any

__all__ = ["Preempted", "StopSignal"]


class Preempted(SystemExit):
    """`functrain.fit` was stopped by SIGTERM (a scheduler's pre-emption) and has saved.

    Raised by `fit` after the stop: the checkpoint (with a ``Checkpointing`` callback) is
    written and the logs are closed. Uncaught, it ends the process with status 143 (128 +
    SIGTERM), as a process killed by SIGTERM reports, so a scheduler can tell a pre-empted run
    from a finished one. A script that wants to go on instead catches it (that is the opt-out)
    and takes ``state``.

    Attributes:
        state: the last complete step's state.
        reason: why the run stopped (``"received SIGTERM"``).

    Example:
        >>> import functrain as ft
        >>> try:
        ...     raise ft.Preempted(state="STATE", reason="received SIGTERM")
        ... except ft.Preempted as e:
        ...     (e.code, e.state)
        (143, 'STATE')
    """

    def __init__(self, state: Any, reason: str) -> None:
        super().__init__(128 + signal.SIGTERM)
        self.state = state
        self.reason = reason


class StopSignal:
    """SIGINT/SIGTERM -> ``reason`` is set and the loop stops at the next step boundary; a
    second SIGINT interrupts at once (``KeyboardInterrupt``). Handlers are installed only on
    the main thread, and restored on exit."""

    def __init__(self) -> None:
        self.reason: str | None = None
        self.terminated = False  # a SIGTERM came: fit raises Preempted after saving
        self._old: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        name = signal.Signals(signum).name
        if self.reason is not None and signum == signal.SIGINT:
            # a second Ctrl-C: to the caller, at once (fit does not swallow this one)
            error = KeyboardInterrupt("a second Ctrl-C")
            error.functrain_second_interrupt = True  # type: ignore[attr-defined]
            raise error
        self.terminated = self.terminated or signum == signal.SIGTERM
        self.reason = f"received {name}"

    def __enter__(self) -> StopSignal:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)
