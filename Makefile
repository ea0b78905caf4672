# Entry points that set everything up on a fresh machine with Python 3.11+ and pip:
#   make demo   - the benchmark's quick mode (12 methods on 3 tasks, about 3 min on 2 cores)
#   make test   - the whole test suite and every docstring example
#   make lint   - ruff check and ruff format --check
#   make docs   - the HTML documentation in docs/_build/html (fails on any warning)
PYTHON ?= python3
VENV := .venv
INSTALLED := $(VENV)/.installed
# docs/conf.py only: the guides' code blocks are aligned by hand
LINT_PATHS := yoto_jax tests benchmarks examples docs/conf.py

.PHONY: demo test bench lint docs

$(INSTALLED): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VENV)/bin/python -m pip install --quiet -e ".[dev,bench,docs]"
	touch $(INSTALLED)

demo: $(INSTALLED)
	$(VENV)/bin/python -m benchmarks.run --quick --out results/quick

bench: $(INSTALLED)
	$(VENV)/bin/python -m benchmarks.run --out results/full

# --dist loadfile: each test module runs in one worker, so its tests share the jitted
# programs they compile instead of compiling them again in the other worker.
# --xla_backend_optimization_level=0: the suite compiles some thousands of small programs
# and runs each briefly, so XLA's LLVM optimisation passes were a quarter of its time
# (466 s against 356 s on 2 cores, 2026-12-06); the tests compare at a few ulps of scale,
# which holds at either level, and a plain `pytest` runs them at the default one.
test: $(INSTALLED)
	XLA_FLAGS="--xla_backend_optimization_level=0 $$XLA_FLAGS" \
	$(VENV)/bin/python -m pytest -n 2 --dist loadfile --doctest-modules yoto_jax tests

# Both checks run; the target fails if either does.
lint: $(INSTALLED)
	$(VENV)/bin/ruff check $(LINT_PATHS); status=$$?; \
	$(VENV)/bin/ruff format --check $(LINT_PATHS) && exit $$status

docs: $(INSTALLED)
	$(VENV)/bin/sphinx-build -W --keep-going -E -b html docs docs/_build/html
