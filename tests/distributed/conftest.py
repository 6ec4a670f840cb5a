"""The distributed lane: tests that start 2 gloo processes on the CPU.

Skipped in the default ``pytest`` run (they take minutes on 2 cores); ``.ci/run`` runs them as
a step of their own:

    FUNCTRAIN_DISTRIBUTED_TESTS=1 python -m pytest tests/distributed

Every test that starts processes passes a timeout to `functrain.distributed.launch` (or to
``subprocess.run`` for torchrun), so a hung rank fails the test instead of stalling the run.
"""

from __future__ import annotations

import os

import pytest

collect_ignore = ["_workers.py"]

ENABLED = os.environ.get("FUNCTRAIN_DISTRIBUTED_TESTS") == "1"


def pytest_collection_modifyitems(config, items):
    if ENABLED:
        return
    skip = pytest.mark.skip(reason="starts processes; run with FUNCTRAIN_DISTRIBUTED_TESTS=1 "
                            "python -m pytest tests/distributed")
    for item in items:
        if "tests/distributed/" in str(item.fspath).replace(os.sep, "/"):
            item.add_marker(skip)
