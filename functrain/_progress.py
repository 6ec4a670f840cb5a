"""The runner's progress bar and end-of-run summary (private).

The bar only ever receives host values (Python floats the runner already read, once per log
window, with `functrain.metrics.compute_all`), so it never causes a device sync itself; it
refuses tensors rather than silently calling ``.item()`` on them.

On a terminal it uses tqdm when tqdm is installed; otherwise (no tqdm, or output redirected to a
file with ``enabled=True``) it prints a plain line at most every ``min_interval`` seconds, which
reads well in log files where tqdm's carriage returns do not.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Mapping
from typing import Any, TextIO

import torch

__all__ = ["ProgressBar", "format_summary"]


def _fmt_value(v: Any) -> str:
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if v != 0 and math.isfinite(v) and (abs(v) >= 1e5 or abs(v) < 1e-3):
            return f"{v:.3e}"
        return f"{v:.4f}"
    return str(v)


def _fmt_time(seconds: float) -> str:
    if not math.isfinite(seconds) or seconds < 0:
        return "?"
    s = int(round(seconds))
    h, rem = divmod(s, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}"


def _check_host(metrics: Mapping[str, Any]) -> None:
    for k, v in metrics.items():
        if isinstance(v, torch.Tensor):
            raise TypeError(
                f"metrics[{k!r}]: expected a float, got a tensor. The progress bar never reads "
                "the device. HINT: pass the floats from functrain.metrics.compute_all.")


class ProgressBar:
    """A training progress bar: step, epoch, metrics, samples/s and ETA.

    samples/s is the steady rate: the samples since the first update over the time since it.
    The first update's interval (in `functrain.fit`: the first log window, which holds the
    compile and the first step) is left out, so the figure is not an average over compile
    time; the end-of-run summary (`functrain.callbacks.Summary`) reports the same figure.

    Args:
        total: the number of steps, or ``None`` if unknown (no percentage or ETA then).
        enabled: ``True``/``False`` to force it on/off; ``None`` shows it only when ``file`` is
            a terminal.
        desc: the label in front of the bar.
        file: the stream to write to; default ``sys.stderr`` (looked up when created).
        min_interval: the fallback (non-tqdm) bar prints at most once per this many seconds.
        epochs: the number of epochs, if known: the bar shows ``epoch=2/10``.

    Example:
        >>> bar = ProgressBar(total=100, enabled=False)
        >>> bar.update(10, {"loss": 0.5}, samples=320, epoch=0)
        >>> bar.n
        10
        >>> bar.close()
    """

    def __init__(
        self,
        total: int | None,
        enabled: bool | None = None,
        desc: str = "train",
        file: TextIO | None = None,
        min_interval: float = 10.0,
        epochs: int | None = None,
    ) -> None:
        self.total = total
        self.desc = desc
        self.file = sys.stderr if file is None else file
        isatty = bool(getattr(self.file, "isatty", lambda: False)())
        self.enabled = isatty if enabled is None else bool(enabled)
        self.min_interval = min_interval
        self.n = 0
        self.epoch: int | None = None
        self.epochs = epochs
        self.metrics: dict[str, Any] = {}
        self._samples_per_s: float | None = None
        self._last_t: float | None = None  # time of the previous update
        self._rate_start: float | None = None  # the first update: the steady rate's start
        self._rate_samples = 0  # samples since then
        self._start = time.perf_counter()
        self._last_print = -math.inf
        self._closed = False
        self._tqdm = None
        if self.enabled and isatty:
            try:
                from tqdm.auto import tqdm
            except ImportError:
                tqdm = None
            if tqdm is not None:
                self._tqdm = tqdm(total=total, desc=desc, file=self.file, unit="step",
                                  dynamic_ncols=True, leave=True)

    def update(
        self,
        n_steps: int,
        metrics: Mapping[str, float] | None = None,
        samples: int | None = None,
        epoch: int | None = None,
        now: float | None = None,
    ) -> None:
        """Advance by ``n_steps`` steps, showing the latest ``metrics``.

        Args:
            n_steps: steps done since the last call.
            metrics: ``{name: float}`` to display (kept until replaced).
            samples: examples processed in those steps, for the samples/s readout.
            epoch: the current epoch, if known.
            now: the ``time.perf_counter()`` of this update (default: read now).

        Raises:
            TypeError: if a metric value is a tensor.

        Example:
            >>> import io
            >>> out = io.StringIO()
            >>> bar = ProgressBar(total=4, enabled=True, file=out, min_interval=0)
            >>> bar.update(2, {"loss": 1.23456}, epoch=1)
            >>> "2/4" in out.getvalue() and "loss=1.2346" in out.getvalue()
            True
        """
        if metrics:
            _check_host(metrics)
            self.metrics.update(metrics)
        if epoch is not None:
            self.epoch = epoch
        now = time.perf_counter() if now is None else now
        if samples is not None:
            if self._rate_start is None:  # the first interval (with the compile) is left out
                self._rate_start = now
            else:
                self._rate_samples += samples
                if now > self._rate_start:
                    self._samples_per_s = self._rate_samples / (now - self._rate_start)
        self._last_t = now
        self.n += n_steps
        if not self.enabled or self._closed:
            return
        if self._tqdm is not None:
            self._tqdm.set_postfix_str(self._postfix(), refresh=False)
            self._tqdm.update(n_steps)
        elif now - self._last_print >= self.min_interval:
            self._print_line(now)

    @property
    def samples_per_s(self) -> float | None:
        """The steady rate shown (samples since the first update over the time since it);
        ``None`` before the second update.

        Example:
            >>> bar = ProgressBar(total=None, enabled=False)
            >>> bar.update(1, samples=8); bar.samples_per_s is None
            True
        """
        return self._samples_per_s

    def _postfix(self) -> str:
        parts = []
        if self.epoch is not None:
            parts.append(f"epoch={self.epoch}" + (f"/{self.epochs}" if self.epochs else ""))
        parts += [f"{k}={_fmt_value(v)}" for k, v in self.metrics.items()]
        if self._samples_per_s is not None:
            parts.append(f"{self._samples_per_s:,.1f} samples/s")
        return ", ".join(parts)

    def _print_line(self, now: float) -> None:
        self._last_print = now
        elapsed = now - self._start
        if self.total:
            pct = 100.0 * self.n / self.total
            eta = elapsed / self.n * (self.total - self.n) if self.n else math.inf
            head = f"{self.desc} {self.n}/{self.total} [{pct:3.0f}%]"
            tail = f"elapsed {_fmt_time(elapsed)}, ETA {_fmt_time(eta)}"
        else:
            head = f"{self.desc} {self.n}"
            tail = f"elapsed {_fmt_time(elapsed)}"
        post = self._postfix()
        line = f"{head} {post} | {tail}" if post else f"{head} | {tail}"
        print(line, file=self.file, flush=True)

    def status(self, text: str | None) -> None:
        """Show ``text`` (e.g. ``"compiling (12 s)"``) in place of the metrics until the next
        update; ``None`` clears it. The fallback bar prints it at most once per
        ``min_interval``. Safe to call from another thread.

        Example:
            >>> import io
            >>> out = io.StringIO()
            >>> bar = ProgressBar(total=4, enabled=True, file=out, min_interval=0)
            >>> bar.status("compiling (3 s)")
            >>> out.getvalue()
            'train 0/4 compiling (3 s)\\n'
        """
        if not self.enabled or self._closed or text is None:
            if self._tqdm is not None and not self._closed:
                self._tqdm.set_postfix_str(self._postfix(), refresh=True)
            return
        if self._tqdm is not None:
            self._tqdm.set_postfix_str(text, refresh=True)
            return
        now = time.perf_counter()
        if now - self._last_print >= self.min_interval:
            self._last_print = now
            print(f"{self.desc} {self.n}{f'/{self.total}' if self.total else ''} {text}",
                  file=self.file, flush=True)

    def write(self, msg: str) -> None:
        """Print ``msg`` on its own line without garbling the bar; a disabled bar prints nothing.

        Example:
            >>> import io
            >>> out = io.StringIO()
            >>> ProgressBar(total=None, enabled=True, file=out).write("saved checkpoint")
            >>> out.getvalue()
            'saved checkpoint\\n'
            >>> ProgressBar(total=None, enabled=False, file=out).write("not shown")
            >>> out.getvalue()
            'saved checkpoint\\n'
        """
        if not self.enabled:
            return
        if self._tqdm is not None:
            self._tqdm.write(msg, file=self.file)
        else:
            print(msg, file=self.file, flush=True)

    def close(self) -> None:
        """Finish the bar (the fallback prints a final line); safe to call twice.

        Example:
            >>> bar = ProgressBar(total=10, enabled=False); bar.close(); bar.close()
        """
        if self._closed:
            return
        self._closed = True
        if not self.enabled:
            return
        if self._tqdm is not None:
            self._tqdm.set_postfix_str(self._postfix(), refresh=False)
            self._tqdm.close()
        elif self._last_t is not None and self._last_print < self._last_t:
            self._print_line(time.perf_counter())


def format_summary(summary: Mapping[str, Any]) -> str:
    """Render an end-of-run summary as a plain-text table.

    Recognised keys (all optional): ``steps`` (int), ``epochs`` (int), ``samples`` (int),
    ``wall_time`` (seconds), ``samples_per_s`` (float), ``last`` and ``best``
    (``{metric name: float}``). Any other scalar entries are listed after these.

    Example:
        >>> print(format_summary({"steps": 1000, "wall_time": 83.2, "samples_per_s": 12345.6,
        ...                       "last": {"loss": 0.1234, "acc": 0.95}, "best": {"loss": 0.1}}))
        Run summary
          steps          1000
          wall time      0:01:23 (83.2 s)
          samples/s      12,345.6
        <BLANKLINE>
          metric    last      best
          loss      0.1234    0.1000
          acc       0.9500    -
    """
    s = dict(summary)
    rows: list[tuple[str, str]] = []
    for key, label in (("steps", "steps"), ("epochs", "epochs"), ("samples", "samples")):
        if key in s:
            rows.append((label, str(s.pop(key))))
    if "wall_time" in s:
        t = float(s.pop("wall_time"))
        rows.append(("wall time", f"{_fmt_time(t)} ({t:.1f} s)"))
    if "samples_per_s" in s:
        rows.append(("samples/s", f"{float(s.pop('samples_per_s')):,.1f}"))
    last = dict(s.pop("last", None) or {})
    best = dict(s.pop("best", None) or {})
    rows += [(str(k), _fmt_value(v)) for k, v in s.items()]
    lines = ["Run summary"]
    if rows:
        width = max(14, max(len(k) for k, _ in rows) + 1)
        lines += [f"  {k:<{width}} {v}" for k, v in rows]
    names = list(last) + [k for k in best if k not in last]
    if names:
        w = max(10, max(len(n) for n in names) + 2)
        cols = [[_fmt_value(last[n]) if n in last else "-",
                 _fmt_value(best[n]) if n in best else "-"] for n in names]
        cw = max(10, max(len(c) for pair in cols for c in pair) + 2)
        lines.append("")
        lines.append(f"  {'metric':<{w}}{'last':<{cw}}best")
        lines += [f"  {n:<{w}}{a:<{cw}}{b}".rstrip() for n, (a, b) in zip(names, cols, strict=True)]
    return "\n".join(lines)
