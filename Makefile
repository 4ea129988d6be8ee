# Every target runs scripts/setup.sh first: it installs what is missing (Docker engine, Compose v2,
# the test image, the virtualenv) and is quick when everything is there.
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: install test test-quick lint bench bench-quick demo clean

install:
	bash scripts/setup.sh

test: install
	$(PY) -m pytest $(PYTEST_ARGS)

test-quick: install
	$(PY) -m pytest -m "not load" $(PYTEST_ARGS)

lint: install
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src
	$(VENV)/bin/mypy

# Writes docs/benchmarks.md (~35 min on 2 busy cores, 24 of them bench_peers.py); bench-quick: a short
# run, written to benchmarks/results/. Both install the `bench` extra (the peers) if it is missing.
bench: install
	$(PY) -c 'import pytest_docker, testcontainers.community.redis' 2>/dev/null || $(VENV)/bin/pip install -q -e '.[bench]'
	$(PY) benchmarks/run_all.py

bench-quick: install
	$(PY) -c 'import pytest_docker, testcontainers.community.redis' 2>/dev/null || $(VENV)/bin/pip install -q -e '.[bench]'
	$(PY) benchmarks/run_all.py --quick

demo: install
	$(VENV)/bin/freeport-compose run -f examples/demo/compose.yml -- sh examples/demo/check.sh

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache build src/*.egg-info
