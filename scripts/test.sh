#!/usr/bin/env bash
# Install everything the tests need (torch first, CPU build by default) and run them.
#   bash scripts/test.sh            # the whole suite
#   bash scripts/test.sh -k tracker # pytest arguments pass through
# Override the torch requirement with HFTRAIN_TORCH, e.g. HFTRAIN_TORCH="torch==2.13.0" or "torch" for CUDA wheels.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/install.sh dev   # sets PY: the interpreter it installed into ($PYTHON, default python3)
"$PY" -m pytest "$@"
