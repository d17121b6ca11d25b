# Two entry points, both self-contained on a machine with Python >= 3.11:
#   make demo   set up a virtualenv and run `keyflow demo` (Ctrl-C stops it)
#   make test   set up a virtualenv and run lint, types and the whole test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The same package with its hot path compiled by mypyc (hatch_build.py), in a venv of its own.
CVENV ?= .venv-compiled
CBIN := $(CVENV)/bin
# keyflow beside its benchmark peers, procrastinate (bench-postgres) and huey
# (bench-storage): never keyflow dependencies.
BVENV ?= .venv-bench
BBIN := $(BVENV)/bin
SOURCES := $(shell find src -type f -not -path '*/__pycache__/*') hatch_build.py pyproject.toml

.PHONY: demo test lint typecheck pytest pytest-compiled compiled chromium bench bench-pure \
	bench-storage bench-dashboard bench-postgres soak clean

$(BIN)/activate: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(BIN)/activate

$(CVENV)/installed: $(SOURCES)
	test -x $(CBIN)/python || $(PYTHON) -m venv $(CVENV)
	$(CBIN)/pip install --quiet --upgrade pip
	KEYFLOW_COMPILE=required $(CBIN)/pip install --quiet '.[dev]'  # not editable: compiled
	touch $@

compiled: $(CVENV)/installed

demo: $(BIN)/activate
	$(BIN)/keyflow demo

lint: $(BIN)/activate
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(BIN)/activate
	$(BIN)/mypy

pytest: $(BIN)/activate chromium
	KEYFLOW_EXPECT_COMPILED=0 $(BIN)/pytest

# The whole suite again, against the compiled build (run from the repository root, the
# tests import the installed package, not src/).
pytest-compiled: compiled chromium
	KEYFLOW_EXPECT_COMPILED=1 $(CBIN)/pytest -p no:cacheprovider

# The browser tests drive Debian's Chromium through Playwright (no browser download).
chromium:
	@test -x /usr/bin/chromium || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium >/dev/null; }

test: lint typecheck pytest pytest-compiled

bench: compiled  # the build a user installs from a wheel
	$(CBIN)/python -m bench.core

bench-pure: $(BIN)/activate  # the sources as they are
	$(BIN)/python -m bench.core

# BENCH_ARGS="--rounds 2 --part sequential" and the like are passed on.
bench-storage: $(BVENV)/installed
	$(BBIN)/python -m bench.storage $(BENCH_ARGS)

bench-dashboard: $(BIN)/activate
	$(BIN)/python -m bench.dashboard

$(BVENV)/installed: pyproject.toml
	test -x $(BBIN)/python || $(PYTHON) -m venv $(BVENV)
	$(BBIN)/pip install --quiet --upgrade pip
	$(BBIN)/pip install --quiet -e '.[postgres]' 'procrastinate>=3,<4' 'psycopg[binary]' \
		'huey>=2.5,<4'
	touch $@

# Needs PostgreSQL (DSN=postgresql://... for another database than the default;
# BENCH_ARGS="--rounds 3" and the like are passed on).
bench-postgres: $(BVENV)/installed
	$(BBIN)/python -m bench.postgres $(if $(DSN),--dsn $(DSN)) $(BENCH_ARGS)

soak: $(BIN)/activate  # the SIGKILL crash test, 300 kills per durable backend
	$(BIN)/python -m tests.crash_workload --backend sqlite --cycles 300
	$(BIN)/python -m tests.crash_workload --backend json --cycles 300

clean:
	rm -rf $(VENV) $(CVENV) $(BVENV) .mypy_cache .pytest_cache .ruff_cache
