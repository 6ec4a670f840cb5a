"""Device placement: which device a runner uses, and moving states and batches onto it."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch

from . import tree as _tree

__all__ = ["batch_size", "check_devices", "place", "prefetch", "require_tensors",
           "resolve_device"]


def resolve_device(device: str | torch.device | None, *,
                   devices: int | str | None = None) -> torch.device:
    """``"auto"`` -> CUDA when available, else CPU; ``"xla"``, ``"xla:N"``, ``"tpu"`` -> a
    torch_xla device (torch_xla is imported here, and only here); anything else ->
    ``torch.device(device)``.

    Example:
        >>> resolve_device("cpu")
        device(type='cpu')
    """
    if device is None or device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if isinstance(device, torch.device) and device.type == "xla":
        device = str(device)
    if isinstance(device, str) and device.startswith(("xla", "tpu")):
        from . import _xla

        return _xla.device(device, devices)
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"device: expected 'auto', 'cpu', 'cuda', 'cuda:N', 'xla', 'tpu' or a "
                         f"torch.device, got {device!r}.") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device={device!r}: CUDA is not available here (torch "
                             f"{torch.__version__}). HINT: use device='auto' or 'cpu'.")
        if dev.index is None:
            # With its index, so that it equals the device of the tensors placed on it.
            dev = torch.device("cuda", torch.cuda.current_device())
    return dev


def check_devices(devices: Any) -> None:
    """Validate the ``devices`` argument: ``None``, ``"all"`` or a positive int."""
    if devices is None or devices == "all":
        return
    if isinstance(devices, bool) or not isinstance(devices, int) or devices < 1:
        raise TypeError(f"devices: expected None, 'all' or a positive int (the number of XLA "
                        f"devices), got {devices!r}. HINT: a list of device ids is not "
                        "supported; data parallelism spans every device (devices='all').")


def place(x: Any, device: torch.device, non_blocking: bool) -> Any:
    """``x`` on ``device`` if it is a tensor elsewhere; anything else as it is."""
    if isinstance(x, torch.Tensor) and x.device != device:
        return x.to(device, non_blocking=non_blocking)
    return x


def require_tensors(tree: Any, name: str, hint: str) -> None:
    """Raise `TypeError` naming the first leaf of ``tree`` that is not a tensor."""
    for path, x in _tree.leaves_with_path(tree, name):
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{path}: expected a tensor, got {type(x).__name__}. HINT: {hint}")


def prefetch(loader: Any, place: Callable[[Any], Any]) -> Iterator[Any]:
    """Iterate ``loader`` one batch ahead: batch i+1's copy to the device is issued before
    batch i is handed out, so on a GPU it overlaps with step i.

    Example:
        >>> list(prefetch([1, 2, 3], lambda b: b * 10))
        [10, 20, 30]
    """
    it = iter(loader)
    try:
        ahead = place(next(it))
    except StopIteration:
        return
    for batch in it:
        current, ahead = ahead, place(batch)
        yield current
    yield ahead


def batch_size(batch: Any) -> int | None:
    """The batch size: the first dimension of the batch's first tensor with one.

    Example:
        >>> batch_size((torch.zeros(4, 2), torch.zeros(4)))
        4
    """
    if isinstance(batch, torch.Tensor):
        return batch.shape[0] if batch.dim() else None
    if type(batch) is tuple and batch and type(batch[0]) is torch.Tensor and batch[0].dim():
        return batch[0].shape[0]  # the common (x, y) batch, without flattening
    for x in _tree.leaves(batch):
        if isinstance(x, torch.Tensor) and x.dim():
            return x.shape[0]
    return None
