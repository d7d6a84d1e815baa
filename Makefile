# `make demo` runs the demo site on the embedded defaults; `make test` runs the whole suite.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

# The suite runs on the machine's real PostgreSQL and Redis.
TEST_ENV := DATABASE_URL=$${TEST_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres} \
            REDIS_URL=$${TEST_REDIS_URL:-redis://127.0.0.1:6379/1}

.PHONY: demo test lint services bench

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check --upgrade pip
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $@

demo: $(STAMP)
	env -u DATABASE_URL -u REDIS_URL $(BIN)/python manage.py demo

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

services:
	.ci/ensure-services

test: $(STAMP) lint services
	$(BIN)/python manage.py check --fail-level WARNING
	$(TEST_ENV) $(BIN)/pytest
	$(TEST_ENV) $(BIN)/nox
