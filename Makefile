# Two entry points that set everything up on a fresh machine with Python 3.11+ and pip:
#   make demo   - the benchmark's quick mode (every method on every task, ~9 min on 2 cores)
#   make test   - the whole test suite
PYTHON ?= python3
VENV := .venv
INSTALLED := $(VENV)/.installed

.PHONY: demo test bench

$(INSTALLED): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VENV)/bin/python -m pip install --quiet -e ".[dev,bench]"
	touch $(INSTALLED)

demo: $(INSTALLED)
	$(VENV)/bin/python benchmarks/run.py --quick --out results/quick

bench: $(INSTALLED)
	$(VENV)/bin/python benchmarks/run.py --out results/full

test: $(INSTALLED)
	$(VENV)/bin/python -m pytest -n 2 tests
