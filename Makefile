# The two commands the README promises: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test install lint type bench clean node-peer constraints

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): $(BIN)/python pyproject.toml constraints.txt build-constraints.txt
	$(BIN)/python -m pip install --quiet -c constraints.txt --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt --build-constraint build-constraints.txt -e '.[test,dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/gateway demo -c config/gateway.yaml

# Two workers (pytest-xdist), a test file each at a time: the tests mostly wait on their
# real peers (redis-server, the simulator, Asterisk, gateway subprocesses), so one worker
# kept the two cores 30 % busy; on this 2-core machine the suite took 16:48 serial and
# 8:19 with two (2026-12-06).  More workers would start more Clusters and Asterisks at
# once than two cores carry.  `make test PYTEST_WORKERS=0` runs it in one process.
PYTEST_WORKERS ?= 2
test: $(STAMP) node-peer
	$(BIN)/python -m pytest -q -n $(PYTEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

# node-smpp, the third SMPP implementation the tests talk to (tests/peers/node/);
# without node/npm (or the registry) its tests skip and say why.
NODE_PEER := tests/peers/node
node-peer:
	@if command -v npm >/dev/null 2>&1 && command -v node >/dev/null 2>&1; then \
	  [ $(NODE_PEER)/node_modules/.package-lock.json -nt $(NODE_PEER)/package-lock.json ] \
	  || (cd $(NODE_PEER) && timeout 300 npm ci --no-audit --no-fund --loglevel=error) \
	  || echo "npm ci failed: the node-smpp peer tests will skip"; \
	else echo "node/npm not found: the node-smpp peer tests will skip"; fi

lint: $(STAMP)
	$(BIN)/ruff check gateway tests bench

type: $(STAMP)
	$(BIN)/mypy gateway

bench: $(STAMP)
	$(BIN)/python bench/push_throughput.py
	$(BIN)/python bench/ivr_calls.py
	bench/vs_kannel.sh

# Newest versions pyproject.toml allows, resolved in a scratch venv, written to
# constraints.txt and build-constraints.txt (their headers kept); run `make test` before
# committing the result.
constraints:
	rm -rf .venv-constraints && $(PYTHON) -m venv .venv-constraints
	.venv-constraints/bin/python -m pip install --quiet --upgrade pip
	.venv-constraints/bin/python -m pip install --quiet -e '.[test,dev]'
	{ sed -n '/^#/p' constraints.txt; .venv-constraints/bin/pip freeze --all --exclude-editable \
	  | grep -v -e '^-e' -e '^setuptools==' -e '^wheel=='; } > constraints.txt.new
	.venv-constraints/bin/python -m pip install --quiet --upgrade "$$(sed -n 's/^requires = \["\(.*\)"\]/\1/p' pyproject.toml)"
	{ sed -n '/^#/p' build-constraints.txt; .venv-constraints/bin/pip freeze --all | grep '^setuptools=='; } \
	  > build-constraints.txt.new
	mv constraints.txt.new constraints.txt && mv build-constraints.txt.new build-constraints.txt
	rm -rf .venv-constraints

clean:
	rm -rf $(VENV) var .pytest_cache .hypothesis
