#!/usr/bin/env bash
# Fetch the wheels scripts/gpu_check.sh needs on the GPU machine (Python 3.12, manylinux x86_64, no network there)
# that its image lacks, into .gpu_wheels/ (git-ignored; name it in the device call's `carry`). The list and the
# pins (the versions installed here, which CI tests) are in scripts/gpu_check.py (CARRIED); bitsandbytes keeps only
# the CUDA 13 libraries the image's torch needs (HFTRAIN_GPU_CUDA=130,132), and the total with the working tree is
# checked against the 64 MiB a device call carries.
#   bash scripts/fetch_gpu_wheels.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
DEST=${HFTRAIN_GPU_WHEELS:-.gpu_wheels}
rm -rf "$DEST"
mkdir -p "$DEST"
mapfile -t SPECS < <("$PY" scripts/gpu_check.py --wheel-plan)
echo "fetching: ${SPECS[*]}"
"$PY" -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
  --python-version 3.12 --implementation cp --abi cp312 --abi abi3 --abi none \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64 \
  -d "$DEST" "${SPECS[@]}"
"$PY" scripts/gpu_check.py --finish-wheels "$DEST"
ls -l "$DEST"
