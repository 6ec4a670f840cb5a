"""Stop a run cleanly on SIGINT/SIGTERM: at the next step boundary, not mid-step."""

from __future__ import annotations

import signal
import threading
from typing import Any

__all__ = ["StopSignal"]


class StopSignal:
    """SIGINT/SIGTERM -> ``reason`` is set and the loop stops at the next step boundary; a
    second SIGINT interrupts at once (``KeyboardInterrupt``). Handlers are installed only on
    the main thread, and restored on exit."""

    def __init__(self) -> None:
        self.reason: str | None = None
        self._old: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        name = signal.Signals(signum).name
        if self.reason is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.reason = f"received {name}"

    def __enter__(self) -> StopSignal:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)
