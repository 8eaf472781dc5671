#!/usr/bin/env bash
# Build here, where the package registries are, what scripts/gpu-check.sh needs on a GPU machine
# that has its own torch and no network: the wheels go to .whl/ (ignored), which the device
# tool carries with the tree.
#  - DeepSpeed has no wheel on the registry: built from its sdist with no ops compiled
#    (DS_BUILD_OPS=0), so it is pure Python and loads on any torch; the trainer needs none of
#    its ops (`torch_adam`), and DeepSpeed JIT-builds any other it asks for.
#  - DeepSpeed's and Tensile's needs that the GPU image lacks, at the versions `make test` runs,
#    for that machine's CPython 3.12 (its image lists the rest: /work/.library/device/KINDS.md).
#  - Tensile itself, without its dependencies (torch is the machine's own).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=.whl
pin() { grep -i "^$1==" requirements/constraints.txt | head -1; }

rm -rf "$OUT" && mkdir -p "$OUT"
DS_BUILD_OPS=0 "$PY" -m pip wheel -q --no-deps --no-build-isolation --no-cache-dir \
    --no-binary deepspeed "$(pin deepspeed)" -w "$OUT"
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d "$OUT" "$(pin hjson)" "$(pin pydantic)" "$(pin pydantic_core)" "$(pin annotated-types)" \
    "$(pin typing-inspection)" "$(pin typing_extensions)"
"$PY" -m pip wheel -q --no-deps --no-build-isolation ./training -w "$OUT"
ls -1 "$OUT"
du -sh "$OUT"
