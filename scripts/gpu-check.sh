#!/usr/bin/env bash
# Tensile's GPU check, for a machine with NVIDIA GPUs and no network (under 5 minutes on one H200).
# Needs, made here first (they travel with the tree, ignored by git):
#   scripts/gpu-wheels.sh                              -> .whl/  (DeepSpeed built here, Tensile, their needs)
#   .venv/bin/python scripts/gpu_check.py prepare      -> .gpu-check/  (a CPU checkpoint to reshard)
# There: scripts/gpu-check.sh OUT_DIR   (with the device tool: carry .whl and .gpu-check, OUT_DIR=$OUT)
# It installs nothing from a registry and runs on the machine's own torch, whatever its version.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT_DIR=${1:?usage: scripts/gpu-check.sh OUT_DIR}
PY=${PY:-python3}
unset DS_ACCELERATOR  # the Makefile exports cpu for this (CPU) machine; DeepSpeed must find CUDA
[ -d .whl ] && [ -d .gpu-check ] || { echo "run scripts/gpu-wheels.sh and gpu_check.py prepare first" >&2; exit 2; }
SITE=${SITE:-/tmp/tensile-site}
"$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" .whl/*.whl
export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
mkdir -p "$OUT_DIR"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv >"$OUT_DIR/nvidia-smi.csv" || true
timeout 290 "$PY" scripts/gpu_check.py run --out "$OUT_DIR" 2>&1 | tee "$OUT_DIR/gpu-check.log"
