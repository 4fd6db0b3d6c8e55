# The two commands the README promises: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test install lint type bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test,dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/gateway demo -c config/gateway.yaml

test: $(STAMP)
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check gateway tests bench

type: $(STAMP)
	$(BIN)/mypy gateway

bench: $(STAMP)
	$(BIN)/python bench/push_throughput.py
	$(BIN)/python bench/ivr_calls.py
	bench/vs_kannel.sh

clean:
	rm -rf $(VENV) var .pytest_cache .hypothesis
