"""Tensor data through `torch.distributed.checkpoint`: the write, and the safe read."""

from __future__ import annotations

import contextlib
import io
import os
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from .._compat import dcp_slice_file, has_dcp_slice_file
from .._errors import describe
from ._format import CheckpointError
from ._unpickler import _read_dcp_metadata

_PARALLEL_BYTES = 1 << 26  # states this large are written by several threads


def _dcp_save(state_dict: dict[str, torch.Tensor], directory: Path, group: Any = None) -> None:
    import torch.distributed.checkpoint as dcp

    # Large states: one data file per writer thread, so that serialization, writing and
    # hashing run in parallel (about 2x faster with 2 threads for 1.2 GB on 2 cores).
    nbytes = sum(t.nbytes for t in state_dict.values())
    threads = 1 if nbytes < _PARALLEL_BYTES else min(4, os.cpu_count() or 1)
    writer = dcp.FileSystemWriter(directory, sync_files=True, thread_count=threads)
    if group is not None:  # every rank of the group writes its share; same files and restore
        with _unwrap_dcp_errors():
            dcp.save(state_dict, storage_writer=writer, process_group=group)
        return
    # no_dist: one process writes everything.
    with _quiet_single_process_warning(), _unwrap_dcp_errors():
        dcp.save(state_dict, storage_writer=writer, no_dist=True)


_SINGLE_PROCESS = (r"torch\.distributed is (disabled, )?unavailable or uninitialized, assuming "
                   r"the intent is to (save|load) in a single process")


@contextlib.contextmanager
def _quiet_single_process_warning() -> Iterator[None]:
    """Hide DCP's "assuming the intent is to save in a single process" warning, which every
    save and load with ``no_dist=True`` emits and which a user can do nothing about.

    ``warnings.catch_warnings`` swaps process-global state, so it is used only on the main
    thread. A background save (``CheckpointManager.save(blocking=False)``) instead adds, once,
    a filter for exactly this message of DCP's: nothing else is filtered.
    """
    if threading.current_thread() is not threading.main_thread():
        warnings.filterwarnings("ignore", message=_SINGLE_PROCESS, category=UserWarning)
        yield
        return
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_SINGLE_PROCESS)
        yield


@contextlib.contextmanager
def _unwrap_dcp_errors() -> Iterator[None]:
    """Re-raise the one error inside DCP's ``CheckpointException`` (a ``BaseException`` that
    ``except Exception`` misses), so that e.g. a full disk surfaces as the ``OSError`` it is."""
    from torch.distributed.checkpoint.api import CheckpointException

    try:
        yield
    except CheckpointException as e:
        if len(e.failures) != 1:
            raise
        (exc, _), = e.failures.values()
        raise exc from None


def _dcp_load(path: Path, like: dict[str, torch.Tensor],
              manifest: dict[str, Any]) -> dict[str, torch.Tensor]:
    """Load the tensors shaped like ``like`` (by key) through DCP, with the safety checks.

    Returns new tensors on ``like``'s devices (the CPU for ``meta`` ones).
    """
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata
    from torch.distributed.checkpoint.planner import LoadItemType

    md = _read_dcp_metadata(path / ".metadata")
    for key, t in like.items():
        entry = md.state_dict_metadata.get(key)
        if not isinstance(entry, TensorStorageMetadata) or tuple(entry.size) != tuple(
                t.shape) or entry.properties.dtype != t.dtype:
            raise CheckpointError(
                f"checkpoint {str(path)!r}: expected DCP entry {key!r} to be a tensor of shape "
                f"{tuple(t.shape)} and dtype {t.dtype} as the manifest says, got {entry!r}. "
                "HINT: the checkpoint was modified after it was written; do not load it.")
    storage = md.storage_data or {}
    for info in storage.values():
        if getattr(info, "relative_path", None) not in manifest["files"]:
            raise CheckpointError(
                f"checkpoint {str(path)!r}: expected DCP to read only files listed in "
                f"manifest.json, got a reference to {getattr(info, 'relative_path', info)!r}. "
                "HINT: the checkpoint was modified after it was written; do not load it.")
    whole = _whole_tensors(md, like)
    loaded: dict[str, torch.Tensor] = {}

    class SafeReader(dcp.FileSystemReader):
        def read_metadata(self, *args: Any, **kwargs: Any) -> Any:
            md.storage_meta.load_id = self.load_id
            return md

        def read_data(self, plan: Any, planner: Any) -> Any:
            if not whole:
                return super().read_data(plan, planner)
            by_file: dict[str, list[Any]] = {}
            for req in plan.items:
                if req.type != LoadItemType.TENSOR:
                    planner.load_bytes(req, io.BytesIO())  # raises
                by_file.setdefault(storage[req.storage_index].relative_path, []).append(req)
            for name, reqs in by_file.items():
                with open(path / name, "rb") as f:
                    for req in reqs:
                        view = dcp_slice_file(self, f, storage[req.storage_index])
                        try:
                            t = torch.load(view, map_location="cpu", weights_only=True)
                        except Exception as e:  # a crafted or foreign file: not torch.save's
                            raise CheckpointError(
                                f"checkpoint {str(path)!r}: expected {name!r} to hold "
                                f"{req.dest_index.fqn!r} as torch.save data, got unreadable "
                                f"bytes ({type(e).__name__}: {str(e)[:200]}). HINT: the "
                                "checkpoint is corrupt or was modified; do not load it.") from None
                        want = like[req.dest_index.fqn]
                        if not (isinstance(t, torch.Tensor) and t.shape == want.shape
                                and t.dtype == want.dtype):
                            raise CheckpointError(
                                f"checkpoint {str(path)!r}: expected {req.dest_index.fqn!r} "
                                f"to hold a tensor like {describe(want)}, got "
                                f"{describe(t)}. HINT: the checkpoint was modified "
                                "after it was written; do not load it.")
                        loaded[req.dest_index.fqn] = t
            fut: torch.futures.Future[None] = torch.futures.Future()
            fut.set_result(None)
            return fut

    class TensorOnlyPlanner(DefaultLoadPlanner):
        def load_bytes(self, read_item: Any, value: io.BytesIO) -> None:
            raise CheckpointError(f"checkpoint {str(path)!r}: expected only tensor entries, "
                                  "got a pickled object; refusing to unpickle it.")

    if whole:  # DCP plans with the shapes; the data never goes into these one-element views
        targets = {k: torch.empty((), dtype=t.dtype).expand(t.shape) for k, t in like.items()}
    else:
        targets = {k: torch.empty_like(t, device="cpu" if t.device.type == "meta" else None)
                   for k, t in like.items()}
    try:
        with _quiet_single_process_warning(), _unwrap_dcp_errors():
            dcp.load(targets, storage_reader=SafeReader(path), planner=TensorOnlyPlanner(),
                     no_dist=True)
    except (CheckpointError, OSError, MemoryError):
        raise
    except Exception as e:  # DCP's reader on a crafted file: IndexError, UnpicklingError...
        raise CheckpointError(
            f"checkpoint {str(path)!r}: expected readable DCP tensor data, got an error "
            f"({type(e).__name__}: {str(e)[:200]}). HINT: the checkpoint is corrupt or was "
            "modified; do not load it.") from None
    if not whole:
        return targets
    for k, t in like.items():
        if k not in loaded and t.numel() == 0:  # DCP plans no read for an empty tensor
            loaded[k] = torch.empty(t.shape, dtype=t.dtype)
    return {k: loaded[k] if t.device.type in ("cpu", "meta") else loaded[k].to(t.device)
            for k, t in like.items()}


def _whole_tensors(md: Any, keys: Any) -> bool:
    """Whether the fast read path applies: each tensor stored whole, in one plain chunk (what
    one process writes). It keeps the tensors ``torch.load`` returns instead of copying each
    into a preallocated one, as DCP's ``FileSystemReader`` does (twice the memory traffic)."""
    return (has_dcp_slice_file()
            and all(len(md.state_dict_metadata[k].chunks) == 1
                    and not any(md.state_dict_metadata[k].chunks[0].offsets) for k in keys)
            and not any(getattr(info, "transform_descriptors", None)
                        for info in (md.storage_data or {}).values()))
