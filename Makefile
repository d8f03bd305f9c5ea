# Everything a new machine needs is installed by the targets themselves: a venv with the
# package, and Debian's ffmpeg when it is missing.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
SPEC ?= specs/moonlit-garden.yaml
PYTEST_ARGS ?=

.PHONY: install system-deps browser run validate plan test check lint bench clean schemas wheel-check

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml | system-deps
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

system-deps:
	@if ! command -v ffmpeg >/dev/null || ! command -v ffprobe >/dev/null; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends ffmpeg; \
	  else \
	    echo "bridge needs ffmpeg and ffprobe: sudo apt-get install ffmpeg" >&2; exit 1; \
	  fi; \
	fi

run: install
	$(BIN)/bridge run $(SPEC)

validate: install
	$(BIN)/bridge validate $(SPEC)

plan: install
	$(BIN)/bridge plan $(SPEC)

test: install browser
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# The HTML report is checked in a real headless browser (Debian's chromium).
browser:
	@if ! command -v chromium >/dev/null; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium; \
	  else \
	    echo "the report test needs chromium: sudo apt-get install chromium (it is skipped without)" >&2; \
	  fi; \
	fi

check: install
	$(BIN)/ruff format --check bridge tests
	$(BIN)/ruff check bridge tests
	$(BIN)/mypy

lint: install
	$(BIN)/ruff format bridge tests
	$(BIN)/ruff check --fix bridge tests

# bridge/schemas/ is what the package loads; schemas/ is its published copy (checked equal).
schemas:
	cp bridge/schemas/* schemas/

# Build the wheel, install it into a fresh venv and run bridge from it, outside the repo.
wheel-check: system-deps
	PYTHON=$(PYTHON) .ci/wheel-check

# Bytecode first: where PYTHONDONTWRITEBYTECODE is set (CI containers, this project's own
# machines) Python would compile bridge's modules again at every start, and the start-up
# figures would measure that instead of bridge.
bench: install
	$(BIN)/python -m compileall -q bridge
	$(BIN)/python -m tests.bench $(BENCH_ARGS)

clean:
	rm -rf $(VENV) output .bench .pytest_cache .ruff_cache
