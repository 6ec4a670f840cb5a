"""Shared test helpers: small models, a compile counter, a host-sync counter."""

from __future__ import annotations

import contextlib
import os

import pytest
import torch

torch.set_num_threads(2)
# compile="auto" compiles in the foreground in tests (deterministic compile counts and
# numbers); tests/test_background_compile.py turns the background compile on where it tests it.
os.environ.setdefault("FUNCTRAIN_BACKGROUND_COMPILE", "0")


class CompileCounter:
    """A torch.compile backend that counts graphs and runs them eagerly (gm.forward)."""

    def __init__(self) -> None:
        self.count = 0

    def __call__(self, gm, example_inputs):
        self.count += 1
        return gm.forward


@pytest.fixture
def compile_counter() -> CompileCounter:
    return CompileCounter()


SYNC_METHODS = ("item", "tolist", "cpu", "numpy", "__bool__", "__float__", "__int__")


@contextlib.contextmanager
def count_host_syncs():
    """Count calls of the tensor methods that copy device data to the host.

    Yields a dict {method name: count}. Patches ``torch.Tensor`` methods for the duration.
    """
    counts = dict.fromkeys(SYNC_METHODS, 0)
    originals = {name: getattr(torch.Tensor, name) for name in SYNC_METHODS}

    def wrap(name, fn):
        def counted(self, *args, **kwargs):
            counts[name] += 1
            return fn(self, *args, **kwargs)

        return counted

    try:
        for name, fn in originals.items():
            setattr(torch.Tensor, name, wrap(name, fn))
        yield counts
    finally:
        for name, fn in originals.items():
            setattr(torch.Tensor, name, fn)
