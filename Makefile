# Every target runs inside the project's own virtual environment (.venv).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: install compile test test-fast bench lint lint-style lint-arch lint-imports lint-private typecheck example screenshots clean

install:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'

# The tests start hundreds of Python processes (workers, CLI commands). Compile
# the sources first: where PYTHONDONTWRITEBYTECODE is set, each process would
# otherwise compile every sitq module it imports (about 0.2 s a process).
compile:
	$(BIN)/python -m compileall -q sitq tests examples

test: compile
	$(BIN)/pytest -q

# The same suite without the slow soak and fault tests.
test-fast: compile
	$(BIN)/pytest -q -m "not slow"

bench:
	$(BIN)/pip install --quiet -e '.[dev,bench]'
	$(BIN)/python benchmarks/run.py
	$(BIN)/python benchmarks/batch_bench.py
	$(BIN)/python benchmarks/adaptive_bench.py
	$(BIN)/python benchmarks/telemetry_overhead.py

# ruff, then the house's layering and types (configured in pyproject.toml): the
# import-linter contracts, the private-name check import-linter cannot do, and mypy
# (strict on the core). `make -k lint` reports every failing check, not just the first.
lint: lint-style lint-arch

lint-style:
	$(BIN)/ruff check sitq tests examples benchmarks
	$(BIN)/ruff format --check sitq tests examples benchmarks

lint-arch: lint-imports lint-private typecheck

lint-imports:
	$(BIN)/lint-imports --no-cache

lint-private:
	$(BIN)/python .ci/check_private_imports.py sitq

typecheck:
	$(BIN)/mypy

# Refresh the committed docs/screenshots/ (the tests alone never write there).
screenshots:
	SITQ_REFRESH_SCREENSHOTS=1 $(BIN)/pytest -q tests/test_dashboard_browser.py

example:
	$(BIN)/python examples/quickstart.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
