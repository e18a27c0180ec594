# `make run` and `make test` do the whole set-up on a fresh machine, then their job.
# Every step is skipped when already done (stamp files, pip's wheel cache, model cache).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export ANONYMIZED_TELEMETRY := False
export STREAMLIT_BROWSER_GATHER_USAGE_STATS := false

.PHONY: run test setup models browser lint bench index clean

run: setup index
	$(BIN)/streamlit run app.py --server.address 127.0.0.1

test: setup browser
	$(BIN)/python -m pytest -q

setup: $(STAMP) models

# torch first and pinned (else pip pulls CUDA builds); llama.cpp built without native
# CPU flags (its AMX kernels crash here); then the project with every version pinned.
$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip==25.3
	$(BIN)/pip install --quiet torch==2.13.0
	CMAKE_ARGS="-DGGML_NATIVE=OFF" $(BIN)/pip install --quiet llama-cpp-python==0.3.36
	$(BIN)/pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

models: $(STAMP)
	$(BIN)/rag setup

# Debian's Chromium for the browser tests (no browser download at test time).
browser:
	@command -v chromium >/dev/null || { apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null; }

index: setup
	$(BIN)/rag index

lint: $(STAMP)
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

bench: setup
	$(BIN)/python bench/index.py

clean:
	rm -rf .rag .pytest_cache .ruff_cache
