# circuitsim: set-up and everyday commands. Every target that runs the project depends on
# `setup`, which is idempotent and takes about a second when nothing changed.
SHELL := /bin/bash
PYTHON := .venv/bin/python
# Extra arguments for pytest, e.g. make test PYTEST_ARGS="-m 'not spice' -x"
PYTEST_ARGS ?=

.PHONY: setup demo test bench clean

setup:
	bash scripts/setup.sh

demo:
	bash scripts/demo.sh

test:
	bash scripts/test.sh $(PYTEST_ARGS)

bench: setup
	$(PYTHON) benchmarks/bench_spice.py

# Build junk only; the virtualenv .venv stays.
clean:
	rm -rf build dist ./*.egg-info .pytest_cache .mypy_cache .ruff_cache
	find . \( -path ./.venv -o -path ./.git \) -prune -o \
		\( -type d -name __pycache__ -prune -exec rm -rf {} + \) -o \
		\( -type f \( -name '*.py[co]' -o -name '*.raw' \) -exec rm -f {} + \)
