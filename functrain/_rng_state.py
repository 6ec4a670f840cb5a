"""The process's global random state, captured into a checkpoint and put back on resume.

Keyed randomness (`functrain.random`) lives in the train state and needs none of this. But a
step that calls ``nn.Dropout`` without a key, ``torch.rand``, or a data pipeline that augments
with Python's ``random`` or NumPy draws from the process's global generators; a resumed run
repeats the uninterrupted one only if those generators continue from where they were when
the checkpoint was written. As Lightning does, `capture` records them (torch's CPU generator,
every CUDA device's generator once CUDA is initialized, Python's ``random``, and NumPy's
global ``RandomState`` when NumPy is already imported) as plain data for a checkpoint's meta
(JSON scalars and tensors), and `restore` sets them back.

Nothing here imports NumPy or initializes CUDA: a process that never used them has nothing
of theirs to capture, and a checkpoint that holds their state restores it only if they are
available.

Example:
    >>> import torch
    >>> saved = capture()
    >>> a = torch.rand(3)
    >>> restore(saved)
    []
    >>> torch.equal(torch.rand(3), a)
    True
"""

from __future__ import annotations

import random
import sys
from typing import Any

import torch

__all__ = ["capture", "restore"]


def capture() -> dict[str, Any]:
    """The global random state as a dict of JSON scalars and CPU tensors.

    Keys: ``"torch"`` (a uint8 tensor), ``"cuda"`` (one per device, only if CUDA is
    initialized), ``"python"`` (``random.getstate()``), ``"numpy"`` (only if NumPy is
    imported).
    """
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = [s.cpu() for s in torch.cuda.get_rng_state_all()]
    version, internal, gauss = random.getstate()
    state["python"] = {"version": version, "state": torch.tensor(internal, dtype=torch.int64),
                       "gauss": gauss}
    np = sys.modules.get("numpy")
    if np is not None:
        name, keys, pos, has_gauss, cached = np.random.get_state()
        state["numpy"] = {"name": str(name), "keys": torch.from_numpy(keys.astype(np.int64)),
                          "pos": int(pos), "has_gauss": int(has_gauss),
                          "cached_gaussian": float(cached)}
    return state


def restore(state: dict[str, Any]) -> list[str]:
    """Set the global random state from `capture`'s dict.

    Returns:
        What could not be restored, as short phrases (e.g. the checkpoint holds 2 CUDA
        generators and this process has 1): the caller warns that the run is not exact.
    """
    missing: list[str] = []
    if "torch" in state:
        torch.set_rng_state(_as_byte_tensor(state["torch"]))
    cuda = state.get("cuda")
    if cuda:
        if not torch.cuda.is_available():
            missing.append(f"the {len(cuda)} CUDA generator(s) (no CUDA here)")
        elif torch.cuda.device_count() != len(cuda):
            missing.append(f"the CUDA generators ({len(cuda)} saved, "
                           f"{torch.cuda.device_count()} devices here)")
        else:
            torch.cuda.set_rng_state_all([_as_byte_tensor(s) for s in cuda])
    py = state.get("python")
    if py is not None:
        internal = tuple(int(v) for v in py["state"].tolist())
        random.setstate((int(py["version"]), internal, py["gauss"]))
    npy = state.get("numpy")
    if npy is not None:
        try:
            import numpy as np
        except ImportError:
            missing.append("NumPy's global generator (NumPy is not installed)")
        else:
            keys = npy["keys"].numpy().astype(np.uint32)
            np.random.set_state((npy["name"], keys, int(npy["pos"]), int(npy["has_gauss"]),
                                 float(npy["cached_gaussian"])))
    return missing


def _as_byte_tensor(x: torch.Tensor) -> torch.Tensor:
    return x.detach().to("cpu", torch.uint8).contiguous()
