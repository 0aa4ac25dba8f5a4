# gpufeed: the two commands a fresh machine needs are `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: venv test lint typecheck unit bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

venv: $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check src tests
	$(BIN)/ruff format --check src tests

typecheck: $(STAMP)
	$(BIN)/mypy

test: lint typecheck
	$(BIN)/pytest

bench: $(STAMP)
	mkdir -p benchmarks/results
	$(BIN)/gpufeed bench ring --json | tee benchmarks/results/ring-64.json
	$(BIN)/gpufeed bench ring --json --slot-bytes 4096 --slots 500000 | tee benchmarks/results/ring-4096.json
	$(BIN)/gpufeed bench pack --json | tee benchmarks/results/pack.json

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache build dist
