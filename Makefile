# The README's words: `make dev` runs the whole stack, `make test` checks everything.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
# Re-install when the dependency list changes; the stamp records the last install.
STAMP := $(VENV)/.installed

.PHONY: dev test lint types unit integration e2e drills bench lock clean

# Every dependency comes from the lock, each file checked against its hash; the project itself
# is then installed on top, and `pip check` proves the lock satisfies pyproject.toml.
$(STAMP): pyproject.toml requirements/dev.txt
	@test -x $(BIN)/python || command -v $(PYTHON) >/dev/null || { echo "make: $(PYTHON)" \
		"not found: Postroom needs Python 3.11 (make dev PYTHON=/path/to/python3.11)" >&2; exit 2; }
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet --require-hashes -r requirements/dev.txt
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	$(BIN)/python -m pip check
	@touch $(STAMP)

# The lock, from pyproject.toml: requirements/main.txt is what the image installs,
# requirements/dev.txt adds the extras `make dev` and `make test` need, at the same versions,
# and requirements/build.txt is what builds the wheel (the build-system's requirements).
# Pins already in a file are kept unless pyproject.toml rules them out (UPGRADE=1 lifts them).
LOCK = $(BIN)/uv pip compile --universal --python-version 3.11 --generate-hashes \
	--quiet --custom-compile-command "make lock" $(if $(UPGRADE),--upgrade)
BUILD_REQUIRES = $(BIN)/python -c "import tomllib; \
	print(*tomllib.load(open('pyproject.toml', 'rb'))['build-system']['requires'], sep='\n')"
lock: $(STAMP)
	$(LOCK) pyproject.toml -o requirements/main.txt
	$(LOCK) pyproject.toml --extra dev -c requirements/main.txt -o requirements/dev.txt
	$(BUILD_REQUIRES) | $(LOCK) - -c requirements/dev.txt -o requirements/build.txt

dev: $(STAMP)
	$(BIN)/postroom dev

test: $(STAMP) lint types
	$(BIN)/postroom templates check
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
