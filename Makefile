# One place for the commands the README names; CI runs `make test`.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: setup test check lint demo kafka-jars clean

$(BIN)/python:
	$(PY) -m venv $(VENV)

setup: $(BIN)/python
	$(BIN)/pip install -q -e '.[dev,ray]'

lint: setup
	$(BIN)/ruff check src tests
	$(BIN)/mypy

# Sets up the environment (and the Kafka broker jars when Java is present), then runs the test suite.
test: setup
	@if command -v java >/dev/null 2>&1 && command -v mvn >/dev/null 2>&1; then bash scripts/kafka.sh fetch; fi
	$(BIN)/python -m pytest -q

check: lint test

demo: setup
	$(BIN)/freshrec demo

clean:
	rm -rf $(VENV) build dist .pytest_cache .mypy_cache .ruff_cache
