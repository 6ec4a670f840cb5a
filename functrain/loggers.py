"""Loggers: where the host-side numbers of a run go (JSON Lines, CSV, TensorBoard).

A logger is any object with the three methods of the `Logger` protocol. The runner calls
``log_metrics`` with plain Python floats (it reads the device once per log window with
`functrain.metrics.compute_all`), so a logger never touches the accelerator. As a defence, a 0-d
tensor passed by hand is converted with ``.item()`` (which syncs); anything else non-numeric is
a ``TypeError``.

Conventions shared by the file loggers:

- **Append, never truncate.** Opening a logger on an existing file appends to it, so resuming a
  run into the same run directory continues its logs. If a run resumes from a checkpoint older
  than its last logged step, some steps appear twice; readers should keep the last row per step.
- **Flushed every write.** Each ``log_metrics`` call is flushed to the OS, so a crash loses
  nothing already logged (there is no ``fsync``; power loss may still drop the tail).
- **Non-finite values** round-trip: JSONL writes ``nan``/``inf``/``-inf`` as the strings
  ``"NaN"``, ``"Infinity"``, ``"-Infinity"`` (strict JSON has no such numbers; `read_jsonl`
  turns them back into floats); CSV writes ``nan``/``inf``/``-inf``, which ``float()`` and
  pandas read back.

Example:
    >>> import os, tempfile
    >>> run_dir = tempfile.mkdtemp()
    >>> loggers = default_loggers(run_dir, tensorboard=False)
    >>> for lg in loggers:
    ...     lg.log_hparams({"lr": 0.1})
    ...     lg.log_metrics({"loss": 0.5}, step=10)
    ...     lg.close()
    >>> sorted(os.listdir(run_dir))
    ['hparams.json', 'metrics.csv', 'metrics.jsonl']
    >>> read_jsonl(os.path.join(run_dir, "metrics.jsonl"))
    [{'step': 10, 'loss': 0.5}]
"""

from __future__ import annotations

import csv
import importlib.util
import json
import math
import os
from collections.abc import Mapping
from typing import Any, Literal, Protocol, runtime_checkable

from ._loggers_mlflow import MLflowLogger as MLflowLogger
from ._loggers_wandb import WandbLogger as WandbLogger

__all__ = [
    "CSVLogger",
    "JSONLLogger",
    "Logger",
    "MLflowLogger",
    "TensorBoardLogger",
    "WandbLogger",
    "default_loggers",
    "read_csv",
    "read_jsonl",
]

_TB_HINT = "HINT: pip install 'functrain[tensorboard]'"


@runtime_checkable
class Logger(Protocol):
    """What the runner needs from a logger: three methods, no base class to inherit.

    - ``log_hparams(params)``: record the run's configuration, once, before training.
    - ``log_metrics(metrics, step)``: record ``{name: float}`` at an integer step.
    - ``close()``: flush and release files; called once at the end of the run.

    Example:
        >>> class PrintLogger:
        ...     def log_hparams(self, params): print("hparams", params)
        ...     def log_metrics(self, metrics, step): print(step, metrics)
        ...     def close(self): pass
        >>> isinstance(PrintLogger(), Logger)
        True
        >>> PrintLogger().log_metrics({"loss": 0.25}, step=3)
        3 {'loss': 0.25}
    """

    def log_hparams(self, params: dict[str, Any]) -> None:
        """Record the run's hyperparameters / configuration."""
        ...

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        """Record ``metrics`` (plain Python numbers) at ``step``."""
        ...

    def close(self) -> None:
        """Flush and release resources."""
        ...


def _number(v: Any, key: str) -> float | int:
    """Return ``v`` as a Python float or int; 0-d tensors / numpy scalars are converted."""
    if isinstance(v, bool):
        return int(v)
    if isinstance(v, (int, float)):
        return v
    if hasattr(v, "ndim") and getattr(v, "ndim", None) == 0 and hasattr(v, "item"):
        return v.item()  # a 0-d tensor or numpy scalar: host sync, but only if passed by hand
    raise TypeError(
        f"metrics[{key!r}]: expected a float or int, got {type(v).__name__}. "
        "HINT: read device values once per window with functrain.metrics.compute_all.")


def _clean(metrics: Mapping[str, Any], step: Any) -> tuple[int, dict[str, float | int]]:
    if isinstance(step, bool) or not isinstance(step, int):
        if hasattr(step, "ndim") and step.ndim == 0 and hasattr(step, "item"):
            step = step.item()
        if not isinstance(step, int):
            raise TypeError(f"step: expected an int, got {type(step).__name__}.")
    out = {}
    for k, v in metrics.items():
        if not isinstance(k, str):
            raise TypeError(f"metrics: expected string keys, got {k!r}.")
        if k == "step":
            raise ValueError("metrics['step']: 'step' is reserved for the step column; rename it.")
        out[k] = _number(v, k)
    return step, out


def _end_with_newline(path: str) -> None:
    """If ``path`` ends in a line cut short by a crash, end it so appended rows stay separate."""
    if not os.path.exists(path) or os.path.getsize(path) == 0:
        return
    with open(path, "rb+") as f:
        f.seek(-1, os.SEEK_END)
        if f.read(1) != b"\n":
            f.write(b"\n")


def _json_value(v: float | int) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return "NaN" if math.isnan(v) else ("Infinity" if v > 0 else "-Infinity")
    return v


_NONFINITE = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}


def _write_hparams(log_path: str, params: Mapping[str, Any]) -> None:
    """Write ``hparams.json`` beside ``log_path``, atomically (temporary file, then rename)."""
    target = os.path.join(os.path.dirname(os.path.abspath(log_path)), "hparams.json")
    tmp = target + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(_hparams_json(params) + "\n")
    os.replace(tmp, target)


def _hparams_json(params: Mapping[str, Any]) -> str:
    return json.dumps(dict(params), indent=2, sort_keys=True, default=str, allow_nan=True)


class JSONLLogger:
    """Append one JSON object per `log_metrics` call to ``path``: ``{"step": s, **metrics}``.

    Hyperparameters go to a separate ``hparams.json`` beside ``path`` (so every line of the
    metrics file has the same shape); `log_hparams` overwrites it with the latest values.
    Values that are not JSON are written as their ``str()``. Non-finite floats are written as
    the strings ``"NaN"``, ``"Infinity"``, ``"-Infinity"``; `read_jsonl` reads them back.
    The file is opened for appending (a resumed run continues it) and flushed on every write.

    Args:
        path: the ``.jsonl`` file; parent directories are created.

    Example:
        >>> import math, os, tempfile
        >>> path = os.path.join(tempfile.mkdtemp(), "metrics.jsonl")
        >>> lg = JSONLLogger(path)
        >>> lg.log_metrics({"loss": 0.5, "grad_norm": math.inf}, step=1)
        >>> lg.close()
        >>> open(path).read()
        '{"step": 1, "loss": 0.5, "grad_norm": "Infinity"}\\n'
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        _end_with_newline(self.path)
        self._file = open(self.path, "a", encoding="utf-8")

    def log_hparams(self, params: dict[str, Any]) -> None:
        """Write ``params`` to ``hparams.json`` beside the metrics file (overwriting it).

        Example:
            >>> import json, os, tempfile
            >>> d = tempfile.mkdtemp()
            >>> JSONLLogger(os.path.join(d, "m.jsonl")).log_hparams({"lr": 0.1, "layers": [2, 3]})
            >>> json.load(open(os.path.join(d, "hparams.json")))
            {'layers': [2, 3], 'lr': 0.1}
        """
        _write_hparams(self.path, params)

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        """Append ``{"step": step, **metrics}`` as one line and flush.

        Raises:
            TypeError: if a value is not a number (names the key).
            ValueError: if a metric is named ``"step"``.

        Example:
            >>> import os, tempfile
            >>> lg = JSONLLogger(os.path.join(tempfile.mkdtemp(), "m.jsonl"))
            >>> lg.log_metrics({"acc": 0.75}, step=2); lg.close()
            >>> read_jsonl(lg.path)
            [{'step': 2, 'acc': 0.75}]
        """
        step, clean = _clean(metrics, step)
        row = {"step": step, **{k: _json_value(v) for k, v in clean.items()}}
        self._file.write(json.dumps(row, allow_nan=False) + "\n")
        self._file.flush()

    def close(self) -> None:
        """Close the file (safe to call twice).

        Example:
            >>> import os, tempfile
            >>> lg = JSONLLogger(os.path.join(tempfile.mkdtemp(), "m.jsonl"))
            >>> lg.close(); lg.close()
        """
        if not self._file.closed:
            self._file.close()


def read_jsonl(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Read a `JSONLLogger` file back, turning ``"NaN"``/``"Infinity"``/``"-Infinity"`` into floats.

    Blank lines are skipped, and so are lines that are not valid JSON: the only way the
    logger leaves one is a crash in the middle of a write.

    Example:
        >>> import os, tempfile
        >>> path = os.path.join(tempfile.mkdtemp(), "m.jsonl")
        >>> lg = JSONLLogger(path); lg.log_metrics({"loss": float("nan")}, step=0); lg.close()
        >>> read_jsonl(path)
        [{'step': 0, 'loss': nan}]
    """
    rows = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            rows.append({k: _NONFINITE.get(v, v) if isinstance(v, str) else v
                         for k, v in row.items()})
    return rows


class CSVLogger:
    """Append rows to a CSV file: a ``step`` column, then one column per metric name.

    The columns are ``step`` plus the union of all metric names, in order of first appearance;
    a row lacking a metric leaves its cell empty. When a new name appears, the file is rewritten
    (atomically, via a temporary file) with the wider header, as Lightning's CSV logger does;
    otherwise rows are appended and flushed. Opening an existing file reads its header and
    appends (a resumed run continues it). Floats are written with ``repr`` (exact round trip;
    non-finite as ``nan``, ``inf``, ``-inf``). Hyperparameters go to ``hparams.json`` beside the
    file, as in `JSONLLogger`.

    Args:
        path: the ``.csv`` file; parent directories are created.

    Example:
        >>> import os, tempfile
        >>> path = os.path.join(tempfile.mkdtemp(), "metrics.csv")
        >>> lg = CSVLogger(path)
        >>> lg.log_metrics({"loss": 0.5}, step=1)
        >>> lg.log_metrics({"loss": 0.25, "val_acc": 0.9}, step=2)
        >>> lg.close()
        >>> print(open(path).read().strip())
        step,loss,val_acc
        1,0.5,
        2,0.25,0.9
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        self._columns: list[str] = ["step"]
        _end_with_newline(self.path)
        if os.path.exists(self.path) and os.path.getsize(self.path) > 0:
            with open(self.path, newline="", encoding="utf-8") as f:
                header = next(csv.reader(f), None)
            if header:
                if header[0] != "step":
                    raise ValueError(
                        f"{self.path}: expected a CSV whose first column is 'step', got "
                        f"{header[0]!r}. HINT: log into a new file or run directory.")
                self._columns = header
        self._file = open(self.path, "a", newline="", encoding="utf-8")
        self._needs_header = self._file.tell() == 0

    @property
    def columns(self) -> list[str]:
        """The current header: ``["step", *metric names]``.

        Example:
            >>> import os, tempfile
            >>> lg = CSVLogger(os.path.join(tempfile.mkdtemp(), "m.csv"))
            >>> lg.log_metrics({"b": 1.0, "a": 2.0}, step=0); lg.close()
            >>> lg.columns
            ['step', 'b', 'a']
        """
        return list(self._columns)

    def log_hparams(self, params: dict[str, Any]) -> None:
        """Write ``params`` to ``hparams.json`` beside the CSV file (overwriting it).

        Example:
            >>> import os, tempfile
            >>> d = tempfile.mkdtemp()
            >>> CSVLogger(os.path.join(d, "m.csv")).log_hparams({"batch_size": 32})
            >>> os.path.exists(os.path.join(d, "hparams.json"))
            True
        """
        _write_hparams(self.path, params)

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        """Append one row (rewriting the file first if ``metrics`` has new names) and flush.

        Raises:
            TypeError: if a value is not a number (names the key).
            ValueError: if a metric is named ``"step"``.

        Example:
            >>> import os, tempfile
            >>> lg = CSVLogger(os.path.join(tempfile.mkdtemp(), "m.csv"))
            >>> lg.log_metrics({"loss": float("inf")}, step=5); lg.close()
            >>> read_csv(lg.path)
            [{'step': 5, 'loss': inf}]
        """
        step, clean = _clean(metrics, step)
        new = [k for k in clean if k not in self._columns]
        if new:
            self._rewrite(self._columns + new)
        if self._needs_header:
            csv.writer(self._file).writerow(self._columns)
            self._needs_header = False
        row = [str(step)] + [_csv_value(clean[c]) if c in clean else ""
                             for c in self._columns[1:]]
        csv.writer(self._file).writerow(row)
        self._file.flush()

    def _rewrite(self, columns: list[str]) -> None:
        self._file.close()
        with open(self.path, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
        tmp = self.path + ".tmp"
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=columns, restval="")
            writer.writeheader()
            writer.writerows(rows)
        os.replace(tmp, self.path)
        self._columns = columns
        self._file = open(self.path, "a", newline="", encoding="utf-8")
        self._needs_header = False

    def close(self) -> None:
        """Close the file (safe to call twice).

        Example:
            >>> import os, tempfile
            >>> lg = CSVLogger(os.path.join(tempfile.mkdtemp(), "m.csv")); lg.close(); lg.close()
        """
        if not self._file.closed:
            self._file.close()


def _csv_value(v: float | int) -> str:
    return repr(v) if isinstance(v, float) else str(v)


def read_csv(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Read a `CSVLogger` file back: ``step`` as int, other cells as floats; empty cells dropped.

    Cells missing from a row cut short by a crash are dropped too.

    Example:
        >>> import os, tempfile
        >>> lg = CSVLogger(os.path.join(tempfile.mkdtemp(), "m.csv"))
        >>> lg.log_metrics({"a": 1.5}, step=0); lg.log_metrics({"b": 2.0}, step=1); lg.close()
        >>> read_csv(lg.path)
        [{'step': 0, 'a': 1.5}, {'step': 1, 'b': 2.0}]
    """
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    return [{k: int(v) if k == "step" else float(v) for k, v in row.items() if v}
            for row in rows]


class TensorBoardLogger:
    """Write scalars to TensorBoard event files in ``log_dir`` (needs the ``tensorboard`` extra).

    ``torch.utils.tensorboard`` is imported here, not at import time of functrain. Each metric
    becomes a scalar series named by its key (use ``"train/loss"``-style keys to group them);
    hyperparameters are recorded as a text summary ``"hparams"`` (a Markdown table), which
    works for values of any type, unlike ``add_hparams``. Event files are flushed every
    ``flush_secs`` seconds and on `close`.

    Args:
        log_dir: the directory for event files (created if needed). Re-opening it on resume
            adds a new event file beside the old ones; TensorBoard shows them as one run.
        flush_secs: how often the writer flushes to disk.

    Raises:
        ImportError: if tensorboard is not installed, with
            ``HINT: pip install 'functrain[tensorboard]'``.

    Example:
        >>> import tempfile
        >>> lg = TensorBoardLogger(tempfile.mkdtemp())  # doctest: +SKIP
        >>> lg.log_metrics({"loss": 0.5}, step=1)  # doctest: +SKIP
        >>> lg.close()  # doctest: +SKIP
    """

    def __init__(self, log_dir: str | os.PathLike[str], flush_secs: int = 10) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as e:  # torch raises ImportError/ModuleNotFoundError without it
            raise ImportError(
                f"TensorBoardLogger needs the tensorboard package, which is not installed ({e}). "
                f"{_TB_HINT}") from e
        self.log_dir = os.fspath(log_dir)
        self._writer = SummaryWriter(log_dir=self.log_dir, flush_secs=flush_secs)

    def log_hparams(self, params: dict[str, Any]) -> None:
        """Record ``params`` as a Markdown table under the text tag ``"hparams"``."""
        lines = ["| name | value |", "|---|---|"]
        lines += [f"| {k} | {v!s} |" for k, v in sorted(dict(params).items())]
        self._writer.add_text("hparams", "\n".join(lines), global_step=0)

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        """Add one scalar per key at ``step``."""
        step, clean = _clean(metrics, step)
        for k, v in clean.items():
            self._writer.add_scalar(k, v, global_step=step)

    def close(self) -> None:
        """Flush and close the event file."""
        self._writer.close()


def _tensorboard_available() -> bool:
    try:
        return importlib.util.find_spec("tensorboard") is not None
    except (ImportError, ValueError):
        return False


def default_loggers(
    run_dir: str | os.PathLike[str], tensorboard: bool | Literal["auto"] = "auto"
) -> list[Logger]:
    """The loggers a run gets by default: ``metrics.jsonl`` and ``metrics.csv`` in ``run_dir``.

    Args:
        run_dir: the run directory (created if needed). Existing logs there are appended to.
        tensorboard: ``"auto"`` adds a `TensorBoardLogger` in ``run_dir/tensorboard`` when the
            tensorboard package is installed and importable; ``True`` requires it
            (``ImportError`` with a hint if missing); ``False`` never adds it.

    Returns:
        ``[JSONLLogger, CSVLogger]`` plus possibly a ``TensorBoardLogger``.

    Raises:
        ValueError: if ``tensorboard`` is not ``True``, ``False`` or ``"auto"``.
        ImportError: if ``tensorboard=True`` and tensorboard is not installed.

    Example:
        >>> import tempfile
        >>> [type(lg).__name__ for lg in default_loggers(tempfile.mkdtemp(), tensorboard=False)]
        ['JSONLLogger', 'CSVLogger']
    """
    if tensorboard not in (True, False, "auto"):
        raise ValueError(f"tensorboard: expected True, False or 'auto', got {tensorboard!r}.")
    run_dir = os.fspath(run_dir)
    os.makedirs(run_dir, exist_ok=True)
    loggers: list[Logger] = [
        JSONLLogger(os.path.join(run_dir, "metrics.jsonl")),
        CSVLogger(os.path.join(run_dir, "metrics.csv")),
    ]
    tb_dir = os.path.join(run_dir, "tensorboard")
    if tensorboard is True:
        loggers.append(TensorBoardLogger(tb_dir))
    elif tensorboard == "auto" and _tensorboard_available():
        try:
            loggers.append(TensorBoardLogger(tb_dir))
        except ImportError:  # installed but unusable (e.g. a protobuf clash): skip it quietly
            pass
    return loggers
