# `make demo` runs the demo site on the embedded defaults; `make test` runs the whole suite.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# FlowMaestro's official Python SDK is also named `flowmaestro`, like the demo site's
# package, so it lives in a venv of its own and runs outside the project root.
SDK_VENV := .venv-sdk
SDK_STAMP := $(SDK_VENV)/.installed
SDK_VERSION := 0.1.0

# The suite runs on the machine's real PostgreSQL and Redis.
TEST_ENV := DATABASE_URL=$${TEST_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres} \
            REDIS_URL=$${TEST_REDIS_URL:-redis://127.0.0.1:6379/1} \
            FLOWMAESTRO_SDK_PYTHON=$(CURDIR)/$(SDK_VENV)/bin/python

# The browser tests drive Debian's Chromium through Playwright (no browser download).
CHROMIUM := /usr/bin/chromium
# The fleet test runs Debian's nginx in front of the server processes, as the test user on
# its own ports and files (docs/nginx/flowmaestro.conf); the system's site is never used.
NGINX := /usr/sbin/nginx
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: demo test lint services bench screenshots

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check --upgrade pip
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $@

$(SDK_STAMP): Makefile
	$(PYTHON) -m venv $(SDK_VENV)
	$(SDK_VENV)/bin/pip install --quiet --disable-pip-version-check flowmaestro==$(SDK_VERSION)
	touch $@

demo: $(STAMP)
	env -u DATABASE_URL -u REDIS_URL $(BIN)/python manage.py demo

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

services:
	.ci/ensure-services

$(CHROMIUM):
	@echo "Chromium is missing: installing Debian's package for the browser tests."
	@export DEBIAN_FRONTEND=noninteractive; \
	  $(SUDO) apt-get install -y -q chromium >/dev/null 2>&1 || \
	  { $(SUDO) apt-get update -q >/dev/null && $(SUDO) apt-get install -y -q chromium >/dev/null; } || \
	  { echo "ERROR: could not install Chromium (apt-get install chromium): the browser tests need it." >&2; exit 1; }

$(NGINX):
	@echo "nginx is missing: installing Debian's package for the fleet test."
	@export DEBIAN_FRONTEND=noninteractive; \
	  $(SUDO) apt-get install -y -q nginx >/dev/null 2>&1 || \
	  { $(SUDO) apt-get update -q >/dev/null && $(SUDO) apt-get install -y -q nginx >/dev/null; } || \
	  { echo "ERROR: could not install nginx (apt-get install nginx): the fleet test needs it." >&2; exit 1; }

# On demand, not in CI: about half an hour of load on a quiet machine (bench/README.md,
# docs/performance.md). Every run goes on when one fails; the target fails if any did.
BENCH_RUNS := \
  "open_rate.py --server uvicorn" \
  "open_rate.py --server daphne" \
  "open_rate.py --server uvicorn --streams 5000 --pace 0" \
  "open_rate.py --server daphne --streams 5000 --pace 0" \
  "open_rate.py --server uvicorn --workers 2 --pace 0" \
  "storm.py --server uvicorn" \
  "storm.py --server daphne" \
  "storm.py --server uvicorn --workers 2" \
  "rest_load.py --server uvicorn" \
  "rest_load.py --server daphne" \
  "rest_load.py --server uvicorn --workers 2" \
  "record_rate.py" \
  "late_join.py --server uvicorn" \
  "late_join.py --server daphne" \
  "stream_load.py --server uvicorn" \
  "stream_load.py --server daphne" \
  "stream_load.py --server uvicorn --workers 2 --streams 2000" \
  "stream_load.py --server uvicorn --idle --streams 10000" \
  "stream_load.py --server daphne --idle --streams 10000" \
  "shutdown.py --server uvicorn" \
  "shutdown.py --server daphne" \
  "log_scale.py"

bench: $(STAMP) services
	@status=0; for run in $(BENCH_RUNS); do \
	  echo "== bench/$$run"; $(BIN)/python bench/$$run || status=1; \
	done; exit $$status

# The live page's screenshots in docs/screenshots/, taken by the browser tests (running,
# failed and completed, and one at a phone's width).
screenshots: $(STAMP) $(CHROMIUM) services
	SCREENSHOTS_DIR=docs/screenshots $(TEST_ENV) $(BIN)/pytest tests/test_browser.py -k "watches or failed_run"

test: $(STAMP) $(SDK_STAMP) $(CHROMIUM) $(NGINX) lint services
	$(BIN)/python manage.py check --fail-level WARNING
	$(TEST_ENV) $(BIN)/pytest
	$(TEST_ENV) $(BIN)/nox
