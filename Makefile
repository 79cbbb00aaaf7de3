# Every target bootstraps .venv itself, so each works from a fresh clone.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install run test test-slow validate lint bench sweep clean

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

validate: $(STAMP)
	$(BIN)/forge validate jobs/

lint: $(STAMP)
	$(BIN)/ruff check runner tests
	$(BIN)/mypy

bench: $(STAMP)
	$(BIN)/forge bench

sweep: $(STAMP)
	$(BIN)/forge sweep jobs/sweep.yaml

clean:
	rm -rf $(VENV) build *.egg-info
