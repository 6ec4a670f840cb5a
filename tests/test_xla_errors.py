"""What a user without a working torch_xla gets from the XLA arguments: errors that say what
to install. (The XLA backend itself is tested in tests/xla, in its own environment.)"""

from __future__ import annotations

import importlib.util
from importlib import metadata

import pytest
import torch

import functrain as ft
from functrain import _xla

NO_XLA = importlib.util.find_spec("torch_xla") is None


def step(state, batch):
    return state, {"n": batch.sum()}


@pytest.mark.skipif(not NO_XLA, reason="torch_xla is installed here")
@pytest.mark.parametrize("device", ["xla", "xla:0"])
def test_xla_device_without_torch_xla_says_what_to_install(device):
    with pytest.raises(ImportError) as e:
        ft.compile_step(step, device=device)
    msg = str(e.value)
    assert f"device={device!r} needs torch_xla, which is not installed" in msg
    assert f"pip install torch_xla=={torch.__version__.split('+')[0]}" in msg
    assert f"pip install torch=={_xla.TESTED} torch_xla=={_xla.TESTED}" in msg


@pytest.mark.skipif(not NO_XLA, reason="torch_xla is installed here")
def test_fit_with_xla_fails_before_touching_the_state():
    state = {"w": torch.ones(2)}
    with pytest.raises(ImportError, match="needs torch_xla"):
        ft.fit(step, state, [torch.ones(3)], epochs=1, device="xla", callbacks=[ft.Logging.quiet()])
    assert state["w"].tolist() == [1.0, 1.0]  # not donated


def test_a_torch_xla_built_for_another_torch_is_refused_before_import(monkeypatch):
    real = metadata.version

    def version(name):
        return "2.9.0" if name == "torch_xla" else real(name)

    monkeypatch.setattr(_xla.metadata, "version", version)
    if torch.__version__.startswith("2.9."):
        pytest.skip("this torch is the one torch_xla 2.9.0 needs")
    with pytest.raises(ImportError, match=r"torch_xla 2\.9\.0 does not match torch 2\.") as e:
        ft.compile_step(step, device="xla")
    assert "major.minor releases must be equal" in str(e.value)


def test_tpu_alias_needs_pjrt_device_tpu(monkeypatch):
    monkeypatch.setenv("PJRT_DEVICE", "CPU")
    with pytest.raises(ValueError, match="device='tpu' expects PJRT_DEVICE=TPU, but "
                                         "PJRT_DEVICE='CPU'"):
        ft.compile_step(step, device="tpu")


@pytest.mark.parametrize("compile", ["openxla"])
def test_openxla_needs_an_xla_device(compile):
    with pytest.raises(ValueError, match="compile='openxla' does not run on device=cpu"):
        ft.compile_step(step, device="cpu", compile=compile)


def test_devices_is_for_xla_only():
    with pytest.raises(ValueError, match=r"devices='all': splitting each batch across devices "
                                         r"is done by torch_xla's SPMD"):
        ft.compile_step(step, device="cpu", devices="all")


def test_the_version_pair_is_compared_by_major_minor():
    assert _xla._release("2.9.0+cu128") == (2, 9)
    assert _xla._release("2.14.1") == (2, 14)
    assert _xla._release("2.9.0rc1") == (2, 9)


@pytest.mark.parametrize("device", ["xla:abc", "xla:", "tpu:0", "xla0"])
def test_malformed_xla_device_names(device):
    with pytest.raises(ValueError, match=r"expected 'xla', 'xla:N' or 'tpu'"):
        ft.compile_step(step, device=device)


@pytest.mark.parametrize("devices", [[0, 1], True, 0, -2, "two"])
def test_devices_must_be_all_or_a_positive_int(devices):
    with pytest.raises(TypeError, match=r"devices: expected None, 'all' or a positive int"):
        ft.compile_step(step, device="cpu", devices=devices)
    with pytest.raises(TypeError, match=r"devices: expected None, 'all' or a positive int"):
        ft.fit(ft.compile_step(step, device="cpu", devices=devices), {"w": torch.ones(2)},
               [torch.ones(3)], epochs=1, callbacks=[ft.Logging.quiet()])


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_device_without_cuda_is_a_clear_error():
    with pytest.raises(ValueError, match=r"device='cuda': CUDA is not available here"):
        ft.compile_step(step, device="cuda")
