#!/usr/bin/env bash
# The device check: mrpo's large-scale path on one GPU, printed as one JSON (stages and
# figures: benchmarks/device_check.py). Offline: the device kit (`make device-kit`: wheels,
# model files, data rows) or the project's own environment and data mirror; nothing is
# downloaded. `--dry-run` checks the plumbing on a CPU; `--smoke` runs every stage at CPU size.
# On the GPU machine the plan (benchmarks/README.md) runs benchmarks/device_step.py instead,
# which installs the kit and runs each command's stages.
#
#   bash benchmarks/device_check.sh [--dry-run | --smoke] [--stages a,b] [--out FILE.json]
#
# Python: $PYTHON, else the project's .venv, else python3. When mrpo or Hydra is not
# importable, the kit's wheels are installed (pip with no configuration and no index).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-}"
if [ -z "$PY" ]; then
  if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
export WANDB_MODE=offline WANDB_SILENT=true HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
export TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false PIP_CONFIG_FILE=/dev/null PIP_NO_INDEX=1
if ! "$PY" -c "import mrpo, hydra" 2>/dev/null; then
  if [ ! -f .device-kit/base/manifest.json ]; then
    echo "device_check.sh: mrpo or Hydra is not importable by $PY and there is no" \
      ".device-kit/base here: run \`make device-kit\` (or \`make setup\`) first" >&2
    exit 3
  fi
  "$PY" benchmarks/device_step.py install >&2
fi
STATE="${MRPO_DEVICE_STATE:-/tmp/mrpo-device}"
if [ -z "${MRPO_DATA_DIR:-}" ]; then
  for d in "$STATE/data" .device-kit/base/data shared/data ../shared/data; do
    if [ -d "$d" ]; then export MRPO_DATA_DIR="$(cd "$d" && pwd)"; break; fi
  done
fi
for d in "$STATE/model" .device-kit/base/model; do
  if [ -z "${MRPO_KIT_MODEL_DIR:-}" ] && [ -f "$d/tokenizer_config.json" ]; then
    export MRPO_KIT_MODEL_DIR="$(cd "$d" && pwd)"
  fi
done
exec "$PY" benchmarks/device_check.py "$@"
