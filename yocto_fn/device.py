"""Device selection and mixed-precision contexts."""

from __future__ import annotations

import contextlib

import torch

from .errors import UserError

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


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


def autocast(device_type: str, dtype: torch.dtype | None):
    """Autocast to `dtype` on `device_type`, or a no-op context when dtype is None."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device_type, dtype=dtype)
