#!/usr/bin/env bash
# Installs torch (pinned CPU build unless HFTRAIN_TORCH says otherwise), then hftrain with the given extras.
# Sourced by scripts/test.sh and scripts/quickstart.sh; safe to run again (pip skips what is installed).
set -euo pipefail
EXTRAS="${1:-}"
# Sourced without arguments, $1 would be the caller's first argument (a recipe flag): only extras names pass.
if [[ -n "$EXTRAS" && ! "$EXTRAS" =~ ^[A-Za-z0-9_,-]+$ ]] || [[ "$EXTRAS" == -* ]]; then
  echo "error: scripts/install.sh: '$EXTRAS' is not a list of extras (e.g. dev); source it as: source scripts/install.sh dev" >&2
  exit 2
fi
PY="${PYTHON:-python3}"
TORCH_REQ="${HFTRAIN_TORCH:-torch==2.13.0}"
if ! "$PY" -c "import torch" >/dev/null 2>&1; then
  "$PY" -m pip install --quiet "$TORCH_REQ"
fi
# An install of this checkout from before recipes/ became `hftrain.recipes` lacks `hftrain sft`: install it again.
if "$PY" scripts/installed.py "$EXTRAS" && "$PY" -c "import hftrain.recipes" >/dev/null 2>&1; then
  :  # this checkout and all it needs are installed already: no pip, no network
elif [ -n "$EXTRAS" ]; then
  "$PY" -m pip install --quiet -e ".[${EXTRAS}]"
else
  "$PY" -m pip install --quiet -e .
fi
