# The README's words: `make dev` runs the whole stack, `make test` checks everything.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
# Re-install when the dependency list changes; the stamp records the last install.
STAMP := $(VENV)/.installed

.PHONY: dev test lint types unit integration e2e drills bench clean

$(STAMP): pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev]'
	@touch $(STAMP)

dev: $(STAMP)
	$(BIN)/postroom dev

test: $(STAMP) lint types
	$(BIN)/pytest

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

types: $(STAMP)
	$(BIN)/mypy

unit: $(STAMP)
	$(BIN)/pytest tests/unit

integration: $(STAMP)
	$(BIN)/pytest tests/integration

e2e: $(STAMP)
	$(BIN)/pytest tests/e2e

drills: $(STAMP)
	$(BIN)/pytest tests/drills

bench: $(STAMP)
	$(BIN)/python -m benchmarks.post_users

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis
