# Two commands on a fresh machine: `make demo` and `make test`. Both build .venv themselves.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test lint typecheck unit bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev,bench]'
	touch $(STAMP)

demo: $(STAMP)
	$(PY) examples/demo.py

lint: $(STAMP)
	$(VENV)/bin/ruff check sdk agent tests examples bench
	$(VENV)/bin/ruff format --check sdk agent tests examples bench

typecheck: $(STAMP)
	$(VENV)/bin/mypy

# Most tests wait on real processes (ledger, agent, PostgreSQL, redis-server, Chromium), so
# they run in worker processes, a whole file to a worker (a file's module-scoped fixtures and
# the order of its tests stay as written). Tests marked `serial` measure a rate against the
# wall clock: they run afterwards, alone. PYTEST_WORKERS=0 runs everything in this process.
PYTEST_WORKERS ?= 4

unit: $(STAMP)
	$(PY) -m pytest -q -m "not serial" -n $(PYTEST_WORKERS) --dist loadfile
	$(PY) -m pytest -q -m serial

# Lint and the type check run beside the tests (they use the CPU the tests leave while they
# wait); any of the three failing fails `make test`. Output is kept per target, not interleaved.
test: $(STAMP)
	$(MAKE) --no-print-directory -j3 --output-sync=target lint typecheck unit

bench: $(STAMP)
	$(PY) bench/run.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .demo
