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

.PHONY: run test setup models browser ocr lint bench index clean

run: setup ocr index
	$(BIN)/streamlit run app.py --server.address 127.0.0.1

test: setup browser ocr
	$(BIN)/python -m pytest -q

setup: $(STAMP) models

# llama.cpp with runtime CPU dispatch: one ggml CPU backend per x86 level, from plain
# x86-64 to AVX-512 VNNI/BF16 (GGML_BACKEND_DL + GGML_CPU_ALL_VARIANTS; portable, unlike
# -march=native), and llama.cpp loads the best one this CPU runs. llama-cpp-python 0.3.36
# never tells ggml where they are, so ggml looks in GGML_BACKEND_DIR: compiled in as this
# venv's llama_cpp/lib (given as a define: the CMake option would install the backends
# there during the build, outside the wheel). The AMX variant is deleted after install:
# its kernels segfaulted on the first decode on an AMX CPU. tests/test_llm_build.py
# checks all of it. The wheel is kept per flags and venv path in WHEELS: pip's own wheel
# cache is keyed by the sdist alone and would hand back a build made with other flags.
LLAMA_PIN := llama-cpp-python==0.3.36
LLAMA_CMAKE := -DGGML_BACKEND_DL=ON -DGGML_CPU_ALL_VARIANTS=ON -DGGML_NATIVE=OFF \
	-DCMAKE_INSTALL_BINDIR=llama_cpp/lib
LLAMA_AMX := libggml-cpu-sapphirerapids.so
WHEELS := $(or $(XDG_CACHE_HOME),$(HOME)/.cache)/rag/wheels

# torch first and pinned (else pip pulls CUDA builds); then llama.cpp (above); then the
# project with every version pinned. The Makefile is a prerequisite so that a venv set up
# by an older recipe (e.g. the AVX2-only llama build) is brought up to date.
$(STAMP): pyproject.toml constraints.txt Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip==25.3
	$(BIN)/pip install --quiet torch==2.13.0
	set -e; site="$$($(BIN)/python -c 'import sysconfig; print(sysconfig.get_path("platlib"))')"; \
	args="$(LLAMA_CMAKE) '-DCMAKE_CXX_FLAGS=-DGGML_BACKEND_DIR=\\\"$$site/llama_cpp/lib\\\"'"; \
	wheels="$(WHEELS)/llama-$$(sha256sum <<< "$(LLAMA_PIN) $$args" | cut -c1-16)"; \
	ls "$$wheels"/*.whl >/dev/null 2>&1 || CMAKE_ARGS="$$args" $(BIN)/pip wheel --quiet \
		--no-deps --no-cache-dir --no-binary llama-cpp-python -w "$$wheels" $(LLAMA_PIN); \
	$(BIN)/pip install --quiet --no-deps --force-reinstall "$$wheels"/*.whl; \
	rm -f "$$site/llama_cpp/lib/$(LLAMA_AMX)"
	$(BIN)/pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

models: $(STAMP)
	$(BIN)/rag setup

# Debian's Chromium for the browser tests (no browser download at test time).
browser:
	@command -v chromium >/dev/null || { apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null; }

# Debian's Tesseract and the language data of RAG_OCR_LANGUAGES' default, for scanned
# PDFs and images; what is already installed is not asked for again. DejaVu: the tests
# render text in several scripts with it.
OCR_LANGS := eng rus deu nor vie
ocr:
	@missing=""; for lang in $(OCR_LANGS); do \
		tesseract --list-langs 2>/dev/null | grep -qx "$$lang" || missing="$$missing tesseract-ocr-$$lang"; \
	done; \
	test -e /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf || missing="$$missing fonts-dejavu-core"; \
	test -z "$$missing" || { apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq tesseract-ocr $$missing >/dev/null; }

index: setup ocr
	$(BIN)/rag index

lint: $(STAMP)
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

bench: setup
	$(BIN)/python bench/index.py

clean:
	rm -rf .rag .pytest_cache .ruff_cache
