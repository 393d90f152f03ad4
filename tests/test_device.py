"""The tested torch range: which versions lie inside it, and the GPU check's warning."""

import runpy
from pathlib import Path

import pytest
import torch

from yocto_fn.device import TORCH_TESTED, torch_is_tested

CHECK = Path(__file__).resolve().parents[1] / "scripts" / "gpu_check.py"


@pytest.mark.parametrize(
    ("version", "inside"),
    [("2.11.0", True), ("2.11.0+cu130", True), ("2.13.0+cpu", True), ("2.14.1", True),
     ("2.14.0a0+git1234", True), ("2.10.2", False), ("2.15.0", False), ("1.13.1", False),
     ("3.0.0", False), ("nightly", False)],
)  # fmt: skip
def test_torch_is_tested_compares_major_minor_with_the_range(version, inside):
    assert TORCH_TESTED == ("2.11", "2.14")
    assert torch_is_tested(version) is inside


@pytest.mark.parametrize(("version", "warned"), [("2.99.0", True), ("2.13.0", False)])
def test_the_gpu_check_warns_about_an_untested_torch(version, warned, monkeypatch, capsys):
    monkeypatch.setattr(torch, "__version__", version)
    monkeypatch.setattr(torch.version, "cuda", None)  # stops right after the version lines
    assert runpy.run_path(str(CHECK))["main"]() == 1
    err = capsys.readouterr().err
    assert ("WARNING: torch " + version + " is outside the tested range" in err) is warned
    assert "CPU build" in err


def test_floats_on_makes_float32_tensors_without_a_host_copy_for_numbers(monkeypatch):
    """Numbers become a fill on the device (no copy from host memory, which on CUDA waits
    for the queued kernels), lists a float32 vector, tensors float32 on the device."""
    from yocto_fn.device import floats_on

    cpu = torch.device("cpu")
    calls = []
    real = torch.tensor
    monkeypatch.setattr(torch, "tensor", lambda *a, **k: calls.append(a) or real(*a, **k))
    lr = floats_on(3e-4, cpu)
    assert lr.shape == () and lr.dtype == torch.float32 and float(lr) == pytest.approx(3e-4)
    assert floats_on(2, cpu).dtype == torch.float32 and not calls
    rates = floats_on([1e-3, 5e-4], cpu)
    assert rates.dtype == torch.float32 and rates.tolist() == pytest.approx([1e-3, 5e-4])
    ints = floats_on(torch.arange(3), cpu)
    assert ints.dtype == torch.float32 and ints.tolist() == [0.0, 1.0, 2.0]
