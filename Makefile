# Two entry points (see README): `make run` installs and starts SAE Explorer on the embedded default,
# `make test` installs the test tools and runs the whole suite. Everything else here serves those two.
PYTHON ?= python3.11
VENV   ?= .venv
BIN    := $(VENV)/bin
PORT   ?= 8000

.PHONY: run test install install-dev lint worker

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# torch first and pinned, so that no resolver ever swaps in another build of it
install: $(BIN)/python
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e .

install-dev: install
	$(BIN)/pip install --quiet -e '.[dev]'

run: install
	$(BIN)/saex serve --port $(PORT)

worker: run

lint: install-dev
	$(BIN)/ruff check app tests benchmarks

test: install-dev
	$(BIN)/ruff check app tests benchmarks
	$(BIN)/python -m pytest -q
