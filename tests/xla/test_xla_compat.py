"""The compatibility checks of tests/test_compat.py, run on the XLA lane's torch (2.9)."""

from __future__ import annotations

import importlib.util
import pathlib

_spec = importlib.util.spec_from_file_location(
    "functrain_core_compat_tests", pathlib.Path(__file__).parents[1] / "test_compat.py")
_core = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_core)
globals().update({n: getattr(_core, n) for n in dir(_core) if n.startswith("test_")})
