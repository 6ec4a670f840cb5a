"""The checkpoint format: its constants, its error, and the file helpers every part uses."""

from __future__ import annotations

import hashlib
import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

FORMAT_VERSION = 1
"""The checkpoint format this version writes; it reads this version and older ones."""

_MANIFEST = "manifest.json"
_META = "meta.json"
_FORMAT = "functrain-checkpoint"
_TENSOR_REF = "__functrain_tensor__"  # a meta.json placeholder for a tensor stored with the data
_JSON_SCALARS = (bool, int, float, str, type(None))


class CheckpointError(ValueError):
    """A checkpoint is incomplete, corrupt, of another format or of a newer format version.

    Example:
        >>> import tempfile, functrain as ft
        >>> with tempfile.TemporaryDirectory() as d:
        ...     try:
        ...         ft.checkpoint.verify(d)
        ...     except ft.checkpoint.CheckpointError as e:
        ...         print("expected a complete functrain checkpoint" in str(e))
        True
    """


def _write_json(path: Path, obj: Any) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=1)
        f.flush()
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _sha256_all(paths: list[Path]) -> list[str]:
    """SHA-256 of each file, in threads (hashlib releases the GIL)."""
    if len(paths) < 2:
        return [_sha256(p) for p in paths]
    with ThreadPoolExecutor(min(len(paths), os.cpu_count() or 1)) as pool:
        return list(pool.map(_sha256, paths))


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()
