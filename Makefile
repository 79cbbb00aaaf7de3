# Every target bootstraps .venv itself, so each works from a fresh clone.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install run test test-slow test-ci validate lint bench sweep clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/forge run jobs/smoke.yaml

test: $(STAMP)
	$(BIN)/pytest

test-slow: $(STAMP)
	$(BIN)/pytest -m slow

# the chosen slow tests CI runs after the default suite
test-ci: $(STAMP)
	$(BIN)/pytest -m 'slow and ci'

validate: $(STAMP)
	$(BIN)/forge validate jobs/

lint: $(STAMP)
	$(BIN)/ruff check runner tests
	$(BIN)/mypy

bench: $(STAMP)
	$(BIN)/forge bench

# jobs/learn.yaml's shards are the sweep's data: solve them first if any is missing
# (forge status, so a rerun with every shard there leaves the store untouched).
SWEEP_JOB = jobs/learn.yaml
SWEEP_DATA_DONE = $(BIN)/forge status $(SWEEP_JOB) --json | $(BIN)/python -c \
	'import json, sys; t = json.load(sys.stdin)["totals"]; sys.exit(t["done"] + t["skipped"] != sum(t.values()))'

sweep: $(STAMP)
	@$(SWEEP_DATA_DONE) || $(BIN)/forge run $(SWEEP_JOB)
	$(BIN)/forge sweep jobs/sweep.yaml

clean:
	rm -rf $(VENV) build *.egg-info
