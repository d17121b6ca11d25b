# Two entry points, both self-contained on a machine with Python >= 3.11:
#   make demo   set up a virtualenv and run `keyflow demo` (Ctrl-C stops it)
#   make test   set up a virtualenv and run lint, types and the whole test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo test lint typecheck pytest chromium bench bench-storage bench-dashboard soak clean

$(BIN)/activate: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(BIN)/activate

demo: $(BIN)/activate
	$(BIN)/keyflow demo

lint: $(BIN)/activate
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(BIN)/activate
	$(BIN)/mypy

pytest: $(BIN)/activate chromium
	$(BIN)/pytest

# The browser tests drive Debian's Chromium through Playwright (no browser download).
chromium:
	@test -x /usr/bin/chromium || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium >/dev/null; }

test: lint typecheck pytest

bench: $(BIN)/activate
	$(BIN)/python -m bench.core

bench-storage: $(BIN)/activate
	$(BIN)/python -m bench.storage

bench-dashboard: $(BIN)/activate
	$(BIN)/python -m bench.dashboard

soak: $(BIN)/activate  # the SIGKILL crash test, 300 kills per durable backend
	$(BIN)/python -m tests.crash_workload --backend sqlite --cycles 300
	$(BIN)/python -m tests.crash_workload --backend json --cycles 300

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache
