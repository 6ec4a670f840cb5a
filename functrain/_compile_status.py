"""Show that the first step is compiling, and for how long (private).

The first call of a compiled step traces and compiles it: seconds to minutes in which the loop
shows nothing. `Compiling` runs around that call; while it lasts, a daemon thread reports
``compiling (N s)`` once a second through a callback (the progress bar's status), and when it
ends the elapsed time is kept for the run summary.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any


class Compiling:
    """Context manager timing a compile and reporting ``compiling (N s)`` while it runs.

    Args:
        report: called with a status string once per ``interval`` seconds from a daemon
            thread, and with ``None`` at the end (clear the status); ``None``: time only.
        interval: seconds between reports.
        delay: seconds before the first report (short compiles stay silent).

    Attributes:
        seconds: the elapsed time, set on exit.

    Example:
        >>> seen = []
        >>> with Compiling(seen.append, interval=0.01, delay=0.0) as c:
        ...     time.sleep(0.05)
        >>> c.seconds >= 0.05, seen[0].startswith("compiling ("), seen[-1] is None
        (True, True, True)
    """

    def __init__(self, report: Callable[[str | None], Any] | None = None,
                 interval: float = 1.0, delay: float = 1.0) -> None:
        self.report = report
        self.interval = interval
        self.delay = delay
        self.seconds: float | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._start = 0.0

    def _tick(self) -> None:
        if self._stop.wait(self.delay):
            return
        while True:
            try:
                self.report(f"compiling ({time.perf_counter() - self._start:.0f} s)")
            except Exception:  # a display must never break training
                return
            if self._stop.wait(self.interval):
                return

    def __enter__(self) -> Compiling:
        self._start = time.perf_counter()
        if self.report is not None:
            self._thread = threading.Thread(target=self._tick, name="functrain-compiling",
                                            daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.seconds = time.perf_counter() - self._start
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            try:
                self.report(None)
            except Exception:
                pass
