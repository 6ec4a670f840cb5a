"""The public façade: every public name imports, and is documented with an example."""

from __future__ import annotations

import importlib
import inspect
import subprocess
import sys

import pytest

import functrain as ft

MODULES = ["tree", "optim", "random", "metrics", "loggers", "data", "distributed", "callbacks",
           "checkpoint", "precision", "population", "privacy"]


def _public(module):
    return [(f"{module.__name__}.{n}", getattr(module, n)) for n in module.__all__
            if not n.startswith("_")]


def _documented(obj) -> bool:
    doc = inspect.getdoc(obj) or ""
    return ">>>" in doc or "Example" in doc


def test_all_names_exist_and_modules_are_listed():
    for name in ft.__all__:
        assert hasattr(ft, name), name
    assert set(MODULES) <= set(ft.__all__)
    assert ft.__version__


@pytest.mark.parametrize("module", MODULES)
def test_every_public_name_has_a_docstring_with_an_example(module):
    mod = importlib.import_module(f"functrain.{module}")
    assert _documented(mod), f"functrain.{module} module docstring"
    missing = []
    for name, obj in _public(mod):
        if inspect.ismodule(obj) or not (callable(obj) or inspect.isclass(obj)):
            continue  # constants and type aliases are described in their module
        if not _documented(obj):
            missing.append(name)
    assert not missing, f"no docstring example: {missing}"


def test_top_level_callables_are_documented():
    missing = [n for n in ft.__all__ if not n.startswith("_")
               and callable(getattr(ft, n)) and not _documented(getattr(ft, n))]
    assert not missing, missing


def test_import_has_no_side_effects_on_torch_settings():
    code = ("import os, torch, warnings, logging; before = (torch.get_num_threads(), "
            "torch.get_default_dtype(), torch.is_grad_enabled(), len(logging.root.handlers), "
            "dict(os.environ)); "
            "import functrain; after = (torch.get_num_threads(), torch.get_default_dtype(), "
            "torch.is_grad_enabled(), len(logging.root.handlers), dict(os.environ)); "
            "assert before == after, (before, after); "
            "import sys; assert 'torch_xla' not in sys.modules and "
            "'tensorboard' not in sys.modules and 'safetensors' not in sys.modules")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


def test_import_registers_no_custom_op():
    """Custom operators are registered by the first draw, not by ``import functrain``."""
    code = ("import torch; import functrain as ft; "
            "ops = lambda: sorted(n for n in torch._C._dispatch_get_all_op_names() "
            "if n.startswith('functrain::')); "
            "assert ops() == [], ops(); "
            "assert not hasattr(torch.ops.functrain, 'threefry2x32'); "
            "ft.random.uniform(ft.random.key(0), (2,)); "
            "assert ops() == ['functrain::normal', 'functrain::normal_from_uniform', "
            "'functrain::threefry2x32', 'functrain::threefry2x32_iota', "
            "'functrain::threefry_bernoulli', 'functrain::threefry_bits32'], ops()")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr


def test_first_draw_inside_torch_compile_registers_the_ops():
    """A compiled function may be the first to draw: registration runs while tracing."""
    code = ("import torch; import functrain as ft\n"
            "@torch.compile(fullgraph=True, backend='eager')\n"
            "def f(k):\n"
            "    return ft.random.normal(k, (3,)) + ft.random.uniform(k, (3,))\n"
            "k = ft.random.key(0)\n"
            "a, b = f(k), f(ft.random.fold_in(k, 1))\n"
            "assert torch.equal(a, ft.random.normal(k, (3,)) + ft.random.uniform(k, (3,)))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr
