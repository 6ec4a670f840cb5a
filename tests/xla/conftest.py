"""The XLA lane: runs in its own environment (torch 2.9.0 + torch_xla 2.9.0), on XLA's CPU
device unless ``PJRT_DEVICE`` says otherwise. ``.ci/run`` runs it as a separate step:

    ./dev --xla python -m pytest tests/xla

Without torch_xla every test here is skipped.
"""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("PJRT_DEVICE", "CPU")
collect_ignore = ["spmd_run.py"]  # a script that test_xla_spmd.py runs in its own process

try:
    import torch_xla
except ImportError:  # the main environment: nothing here can run
    torch_xla = None
else:
    # Start the XLA runtime before any test runs a backward pass on the CPU: PyTorch's
    # autograd engine counts the devices it serves at the process's first backward.
    torch_xla.device()


def pytest_collection_modifyitems(config, items):
    if torch_xla is None:
        skip = pytest.mark.skip(reason="torch_xla is not installed (the XLA lane has its own "
                                "environment: ./dev --xla python -m pytest tests/xla)")
        for item in items:
            if "tests/xla/" in str(item.fspath).replace(os.sep, "/"):
                item.add_marker(skip)
