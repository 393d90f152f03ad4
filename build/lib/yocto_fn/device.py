"""Device selection and mixed-precision contexts."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Sequence

import torch

from .errors import UserError

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}

TORCH_TESTED = ("2.11", "2.14")
"""The oldest and the newest torch release (major.minor) the test suite has passed on."""


def torch_is_tested(version: str | None = None) -> bool:
    """Whether `version` (default: the running torch's, e.g. "2.13.0+cpu") lies inside
    `TORCH_TESTED`, bounds included; only major.minor counts, so patch releases and local
    builds of a tested release are in."""
    found = re.match(r"(\d+)\.(\d+)", torch.__version__ if version is None else version)
    if found is None:
        return False
    lo, hi = (tuple(int(n) for n in v.split(".")) for v in TORCH_TESTED)
    return lo <= (int(found[1]), int(found[2])) <= hi


def resolve(device: str = "auto") -> torch.device:
    """`auto` picks cuda > mps > cpu; an explicit device that is missing is a UserError."""
    has_mps = hasattr(torch.backends, "mps") and torch.backends.mps.is_available()
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "mps" if has_mps else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda was asked for but CUDA is not available; use --device cpu")
    if device == "mps" and not has_mps:
        raise UserError("--device mps was asked for but MPS is not available; use --device cpu")
    if device not in ("cpu", "cuda", "mps"):
        raise UserError(f"unknown device '{device}': choose auto, cpu, cuda or mps")
    return torch.device(device)


def bf16_is_native(device: torch.device) -> bool:
    """Whether bf16 matrix work runs on native units here: a CUDA GPU with bf16 support, or
    a CPU with AVX512-BF16 or AMX. Elsewhere bf16 is emulated and slower than fp32."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        cpu = torch.cpu
        return bool(cpu._is_avx512_bf16_supported() or cpu._is_amx_tile_supported())
    return False


def amp_dtype(amp: str, dtype: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of `--amp on|off` and `--amp-dtype`: off is fp32 (None), on is
    `--amp-dtype`, which fp16 allows on CUDA only. `--amp auto` depends on the model's shape
    too, so the run decides it once the model is known (`runstate.choose_amp`)."""
    if amp == "auto":
        raise ValueError("--amp auto is decided per run by runstate.choose_amp")
    if amp == "off":
        return None
    if dtype == "fp16" and device.type != "cuda":
        raise UserError("--amp-dtype fp16 needs CUDA; use --amp-dtype bf16 on this device")
    return AMP_DTYPES[dtype]


def autocast(device_type: str, dtype: torch.dtype | None):
    """Autocast to `dtype` on `device_type`, or a no-op context when dtype is None."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device_type, dtype=dtype)


def floats_on(value: float | Sequence[float] | torch.Tensor, device: torch.device) -> torch.Tensor:
    """`value` as a float32 tensor on `device`, without making the host wait for the device.

    `torch.tensor(x, device="cuda")` copies from pageable host memory, and that copy waits
    for every kernel already queued: once per train step, the host could no longer queue
    the next step's kernels while the GPU runs this one's. A number is written by a fill
    kernel instead, and a list is copied from pinned memory without blocking.
    """
    if isinstance(value, torch.Tensor):
        return value.to(device=device, dtype=torch.float32)
    if isinstance(value, (int, float)):
        return torch.full((), value, dtype=torch.float32, device=device)
    if device.type == "cuda":
        pinned = torch.tensor(value, dtype=torch.float32).pin_memory()
        return pinned.to(device, non_blocking=True)
    return torch.tensor(value, dtype=torch.float32, device=device)
