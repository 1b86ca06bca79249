#!/usr/bin/env bash
# The one prepared GPU check (parts and output: scripts/gpu_check.py). On the GPU machine, from the repository root,
# after `bash scripts/fetch_gpu_wheels.sh` here (the wheels travel in .gpu_wheels/ with the tree):
#   bash scripts/gpu_check.sh                 # parts a-e, then a summary table (also written to $OUT/summary.md)
#   bash scripts/gpu_check.sh --parts a,f     # some parts; f (overhead on the 0.5B model) is not in the default set
#   bash scripts/gpu_check.sh --dry-run       # anywhere, no GPU, nothing downloaded: what CI runs
# The carried wheels go into a folder on PYTHONPATH (pip --no-index --no-deps --target), so the machine's own
# torch, transformers, accelerate and peft are used; hftrain runs from this checkout.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
WHEELS=${HFTRAIN_GPU_WHEELS:-.gpu_wheels}
dry=0
for argument in "$@"; do
  if [ "$argument" = --dry-run ]; then dry=1; fi
done
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1
export HF_HUB_DISABLE_PROGRESS_BARS=1 HF_DATASETS_DISABLE_PROGRESS_BARS=1 TOKENIZERS_PARALLELISM=false
export PYTHONUNBUFFERED=1 HFTRAIN_TRACKER_DB=${HFTRAIN_TRACKER_DB:-/tmp/hftrain-gpu-check-runs.db}
if [ "$dry" = 0 ] && compgen -G "$WHEELS/*.whl" >/dev/null; then
  SITE=${HFTRAIN_GPU_SITE:-/tmp/hftrain-gpu-site}
  mapfile -t SPECS < <("$PY" scripts/gpu_check.py --wheel-plan)
  "$PY" -m pip install --quiet --no-index --find-links "$WHEELS" --no-deps --no-compile --no-cache-dir \
    --upgrade --target "$SITE" "${SPECS[@]}"
  export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
exec "$PY" scripts/gpu_check.py --wheels "$WHEELS" "$@"
