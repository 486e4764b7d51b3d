#!/usr/bin/env bash
# Download the wheels the lent GPU machine lacks into .whl/ (ignored by git; carried to the
# device with `carry: [".whl"]`). That machine has Python 3.12, torch 2.11, triton 3.6 and
# transformers but no megatron-core and no package registry (/work/.library/device/README.md).
#
#   megatron-core==0.16.1  the engine. Its wheel's Requires-Dist (no extras) lists torch,
#                          numpy and packaging, all in the image (KINDS.md), so nothing else.
#   liger-kernel==0.8.5    the comparison column of tools/bench_kernels.py. Requires-Dist:
#                          torch, triton (both in the image).
#   torchao==0.18.0        model.fp8 (the session's fp8_360m step): float8 training is Python
#                          on torch's scaled matmuls; no Requires-Dist outside its extras.
# HF datasets is not in the image and not needed: JSON Lines (the embedded corpus that the
# engine checks and train_short prepare) are read with the standard library (data/readers.py).
#
# Run from the repository root:  bash tools/gpu_wheels.sh
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .whl
grep -qx '/.whl/' .gitignore 2>/dev/null || echo "warning: .whl/ is not in .gitignore" >&2
PLAT=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_24_x86_64 manylinux_2_17_x86_64 \
         manylinux2014_x86_64 manylinux1_x86_64 any; do PLAT+=(--platform "$p"); done
dl() {
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    "${PLAT[@]}" -d .whl "$1"
}
dl megatron-core==0.16.1
dl liger-kernel==0.8.5
dl torchao==0.18.0
# Keep one version of each project: two stop the whole install on the device.
ls .whl
for w in .whl/megatron_core-*.whl .whl/liger_kernel-*.whl .whl/torchao-*.whl; do
  echo "== $w"; unzip -p "$w" '*.dist-info/METADATA' | grep '^Requires-Dist' | grep -v 'extra ==' || true
done
du -sh .whl
