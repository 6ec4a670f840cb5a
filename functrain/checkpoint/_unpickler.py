"""DCP's ``.metadata`` read with an unpickler that admits only DCP's own types."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import torch

from .._compat import dcp_metadata_globals
from ._format import CheckpointError


def _read_dcp_metadata(path: Path) -> Any:
    """Unpickle DCP's ``.metadata`` allowing only the types it is made of (see Safety)."""
    from torch.distributed.checkpoint.metadata import StorageMeta

    with open(path, "rb") as f:
        try:
            md = _MetadataUnpickler(f).load()
        except CheckpointError:
            raise
        except Exception as e:
            raise CheckpointError(f"checkpoint {str(path.parent)!r}: expected a readable DCP "
                                  f".metadata, got an error ({type(e).__name__}: {e}). HINT: the "
                                  "checkpoint is corrupt; use an older one.") from None
    if type(md).__name__ != "Metadata":
        raise CheckpointError(f"checkpoint {str(path.parent)!r}: expected DCP Metadata in "
                              f".metadata, got {type(md).__name__}.")
    if getattr(md, "storage_meta", None) is None:
        md.storage_meta = StorageMeta()
    return md


class _MetadataUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in dcp_metadata_globals() or (
                module == "torch" and isinstance(getattr(torch, name, None),
                                                 (torch.dtype, torch.layout, torch.memory_format))):
            return super().find_class(module, name)
        raise CheckpointError(f"checkpoint: expected DCP metadata made of DCP's own types, got a "
                              f"reference to {module}.{name}; refusing to load it. HINT: the "
                              "file was not written by DCP and may try to run code.")
