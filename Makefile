# One place for the commands the README names; CI (.ci/run) runs `make check`: lint, types, tests.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Installed when pyproject.toml is newer than it: `make setup` is a no-op when nothing changed.
STAMP := $(VENV)/.freshrec-installed

.PHONY: setup test check lint demo kafka-jars browser clean

$(BIN)/python:
	$(PY) -m venv $(VENV)

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[dev,ray]'
	touch $(STAMP)

setup: $(STAMP)

# The Kafka broker jars, when Java and Maven are present (tests marked `kafka` need them).
kafka-jars:
	@if command -v java >/dev/null 2>&1 && command -v mvn >/dev/null 2>&1; then bash scripts/kafka.sh fetch; fi

# Chromium and its driver for the page test: installed under CI (CI=true, where that test must run);
# elsewhere only when missing and `make browser` is asked for (without them the test skips).
browser:
	bash scripts/browser.sh

lint: setup
	$(BIN)/ruff check src tests
	$(BIN)/mypy

# Sets up the environment (and the Kafka broker jars when Java is present), then runs the test suite.
test: setup kafka-jars
	@if [ "$${CI:-}" = "true" ]; then bash scripts/browser.sh; fi
	$(BIN)/python -m pytest -q

check: lint test

demo: setup
	$(BIN)/freshrec demo

clean:
	rm -rf $(VENV) build dist .pytest_cache .mypy_cache .ruff_cache
