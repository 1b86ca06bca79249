#!/usr/bin/env bash
# Install torch (CPU build unless HFTRAIN_TORCH says otherwise) and hftrain, then train the default SFT recipe:
# a tiny Llama learns arithmetic offline in a few minutes. Extra arguments go to the recipe, e.g.
#   bash scripts/quickstart.sh --max_steps 200
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/install.sh ""   # no extras; an explicit "" so the recipe's flags never reach pip
export HF_HUB_DISABLE_TELEMETRY=1
# One process needs no launcher: a bad flag ends in the recipe's one `error:` line and exit status 2.
"$PY" recipes/sft.py "$@"
