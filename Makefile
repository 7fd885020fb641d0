# One Makefile; CI (.ci/run) calls `make test` exactly as a developer does.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: install test lint format typecheck pytest bench demo clean

install: $(STAMP)

# Reinstall only when pyproject.toml (or the ipc ring's C core and its build hook) changed
# since the last install: the install compiles sealserve.ipc._ringcore (hatch_build.py).
$(STAMP): pyproject.toml hatch_build.py src/sealserve/ipc/_ringcore.c
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $@

lint: install
	$(BIN)/ruff check src tests examples
	$(BIN)/ruff format --check src tests examples
	$(BIN)/lint-imports

format: install
	$(BIN)/ruff format src tests examples
	$(BIN)/ruff check --fix src tests examples

typecheck: install
	$(BIN)/mypy --strict src examples

pytest: install
	$(BIN)/pytest

test: lint typecheck pytest

bench: install
	$(BIN)/sealserve bench all --out benchmarks/results

# The demo needs the package and its `models` extra only: on a fresh clone it installs just
# those, without byte-compiling (about a minute on the build machine, against two and a half
# for the full `.[dev]` install); after `make install` it installs nothing.
DEMO_STAMP := $(VENV)/.demo-stamp
$(DEMO_STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@if [ -f $(STAMP) ] && [ $(STAMP) -nt pyproject.toml ]; then :; else \
	  $(BIN)/python -m pip install --quiet --no-compile -e '.[models]'; fi
	@touch $@

demo: $(DEMO_STAMP)
	$(BIN)/python examples/demo.py

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache .hypothesis
