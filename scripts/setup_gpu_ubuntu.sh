#!/usr/bin/env bash
# Set up yocto_fn on an Ubuntu machine with an NVIDIA GPU: a local .venv with a CUDA build
# of torch and this project, then a check that prints the GPU and its bf16 matmul TFLOP/s.
#
#   bash scripts/setup_gpu_ubuntu.sh
#   CUDA_INDEX=https://download.pytorch.org/whl/cu130 bash scripts/setup_gpu_ubuntu.sh
#
# PyPI's Linux x86_64 torch wheels are CUDA builds; CUDA_INDEX picks another CUDA version.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
TORCH_VERSION=${TORCH_VERSION:-2.13.0}

if ! command -v nvidia-smi >/dev/null 2>&1; then
    echo "error: nvidia-smi not found; install the NVIDIA driver first (sudo ubuntu-drivers install)" >&2
    exit 2
fi
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader

test -x .venv/bin/python || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
if [ -n "${CUDA_INDEX:-}" ]; then
    .venv/bin/python -m pip install -q "torch==${TORCH_VERSION}" --index-url "$CUDA_INDEX"
else
    .venv/bin/python -m pip install -q "torch==${TORCH_VERSION}"
fi
.venv/bin/python -m pip install -q -e '.[dev]'
.venv/bin/python scripts/gpu_check.py
