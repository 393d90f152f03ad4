"""Check the CUDA set-up: torch build, device name, and a bf16 matmul TFLOP/s figure.

Run by setup_gpu_ubuntu.sh once it has installed the project. Exits 1 (with the reason) when
CUDA is not usable, so set-up scripts can stop there. A torch
outside the tested range (`yocto_fn.device.TORCH_TESTED`) gets a warning line, not a failure.
"""

from __future__ import annotations

import statistics
import sys
import time

import torch

from yocto_fn.device import TORCH_TESTED, torch_is_tested


def matmul_tflops(
    device: torch.device, dtype: torch.dtype, n: int = 8192, repeats: int = 10
) -> float:
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize(device)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        torch.cuda.synchronize(device)
        times.append(time.perf_counter() - t0)
    return 2 * n**3 / statistics.median(times) / 1e12


def main() -> int:
    print(f"torch {torch.__version__}, CUDA build {torch.version.cuda}")
    if not torch_is_tested():
        lo, hi = TORCH_TESTED
        print(f"WARNING: torch {torch.__version__} is outside the tested range {lo} to {hi}; "
              "it may work, but nothing has checked it", file=sys.stderr)  # fmt: skip
    if torch.version.cuda is None:
        print("FAIL: this torch is a CPU build; reinstall with CUDA_INDEX set, e.g. "
              "https://download.pytorch.org/whl/cu130", file=sys.stderr)  # fmt: skip
        return 1
    if not torch.cuda.is_available():
        print("FAIL: torch.cuda.is_available() is False; check the driver (nvidia-smi)",
              file=sys.stderr)  # fmt: skip
        return 1
    device = torch.device("cuda")
    name = torch.cuda.get_device_name(device)
    mem = torch.cuda.get_device_properties(device).total_memory / 2**30
    print(f"device: {name}, {mem:.0f} GiB, bf16 supported: {torch.cuda.is_bf16_supported()}")
    print(f"bf16 matmul 8192x8192: {matmul_tflops(device, torch.bfloat16):.1f} TFLOP/s")
    print("PASS")
    return 0


if __name__ == "__main__":
    sys.exit(main())
