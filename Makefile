PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# What serving needs, and what the tests and benchmarks need on top (Playwright, atheris, matplotlib...).
SERVE_STAMP := $(VENV)/.installed-serve
STAMP := $(VENV)/.installed
NODE_WORKER := engines/node-echo
FIREFOX_DRIVER := tests/e2e/firefox

.PHONY: serve test lint typecheck unit fuzz bench soak clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# Re-install when the project's dependencies change.
$(SERVE_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .
	touch $(SERVE_STAMP)

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[test,bench]'
	touch $(STAMP) $(SERVE_STAMP)

serve: $(SERVE_STAMP)
	$(BIN)/asr-actors serve $(ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

# The Node.js reference engine worker, from its lock file.
$(NODE_WORKER)/node_modules/.installed: $(NODE_WORKER)/package-lock.json
	cd $(NODE_WORKER) && npm ci --silent --no-audit --no-fund
	touch $@

# puppeteer-core for the Firefox ESR page test, from its lock file (it downloads no browser).
$(FIREFOX_DRIVER)/node_modules/.installed: $(FIREFOX_DRIVER)/package-lock.json
	cd $(FIREFOX_DRIVER) && npm ci --silent --no-audit --no-fund
	touch $@

unit: $(STAMP) $(NODE_WORKER)/node_modules/.installed $(FIREFOX_DRIVER)/node_modules/.installed
	$(BIN)/pytest

# Coverage-guided fuzzing of every parser of peer input (fuzz/fuzz_codecs.py); libFuzzer prints the
# executions run. New inputs it finds go to a scratch corpus, never into the repository's seeds.
FUZZ_RUNS ?= 200000
FUZZ_SCRATCH := tests/artifacts/fuzz-corpus
fuzz: $(STAMP)
	mkdir -p $(FUZZ_SCRATCH)
	$(BIN)/python fuzz/fuzz_codecs.py $(FUZZ_SCRATCH) fuzz/corpus -runs=$(FUZZ_RUNS) -max_len=4096 \
		-artifact_prefix=tests/artifacts/ -print_final_stats=1 > tests/artifacts/fuzz.log 2>&1 \
		|| (tail -40 tests/artifacts/fuzz.log; exit 1)
	grep -E "^Done|number_of_executed_units|cov:.*DONE" tests/artifacts/fuzz.log

test: lint typecheck unit fuzz

# The gateway against the reference relay (docs/performance.md); BENCH_ARGS to change the workload.
BENCH_ARGS ?= --streams 500 --duration 30 --baseline
bench: $(STAMP)
	$(BIN)/asr-actors bench $(BENCH_ARGS)

# 1,000 real-time connections for 10 minutes (not in CI): errors, drops and the RSS drift
# (docs/reliability.md). SOAK_ARGS to change it.
SOAK_ARGS ?= --streams 1000 --duration 600 --session-seconds 60 --load-processes 2
soak: $(STAMP)
	mkdir -p tests/artifacts
	$(BIN)/asr-actors bench $(SOAK_ARGS) --json tests/artifacts/soak.json

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
