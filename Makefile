PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
NODE_WORKER := engines/node-echo

.PHONY: serve test lint typecheck unit bench clean

# Re-install when the project's dependencies change.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test,bench]'
	touch $(STAMP)

serve: $(STAMP)
	$(BIN)/python -m asr_actors serve $(ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

# The Node.js reference engine worker, from its lock file.
$(NODE_WORKER)/node_modules/.installed: $(NODE_WORKER)/package-lock.json
	cd $(NODE_WORKER) && npm ci --silent --no-audit --no-fund
	touch $@

unit: $(STAMP) $(NODE_WORKER)/node_modules/.installed
	$(BIN)/pytest

test: lint typecheck unit

# The gateway against the reference relay (docs/performance.md); BENCH_ARGS to change the workload.
BENCH_ARGS ?= --streams 500 --duration 30 --baseline
bench: $(STAMP)
	$(BIN)/python -m asr_actors bench $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
