#!/usr/bin/env bash
# Install torch (CPU build unless HFTRAIN_TORCH says otherwise) and hftrain, then train the default SFT recipe:
# a tiny Llama learns arithmetic offline in a few minutes. Extra arguments go to the recipe, e.g.
#   bash scripts/quickstart.sh --max_steps 200
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/install.sh
export HF_HUB_DISABLE_TELEMETRY=1
"$PY" -m accelerate.commands.launch --num_processes 1 --num_machines 1 --mixed_precision no --dynamo_backend no recipes/sft.py "$@"
