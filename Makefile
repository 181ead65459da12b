# Two commands on a fresh machine: `make run` and `make test`. Each installs what it needs
# into .venv (never an unpinned torch: see pyproject.toml).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PORT ?= 8001
MODEL_REPOSITORY ?= models
ARGS ?=

.PHONY: run client export-deps test lint typecheck protos export bench clean system-deps image-test image-test-gpu

$(VENV)/.serve: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e .
	touch $@

$(VENV)/.dev: pyproject.toml $(VENV)/.serve
	$(PY) -m pip install -q -e '.[dev,export]'
	touch $@

# What the README's examples import beside the server: tritonclient (gRPC + HTTP), scikit-learn.
client: $(VENV)/.serve
	$(PY) -m pip install -q -e '.[client]'

# Training and export (`.venv/bin/cnnserve export ...`): torch 2.13.0 CPU, scikit-learn, optuna.
export-deps: $(VENV)/.serve
	$(PY) -m pip install -q -e '.[export]'

# Any other server option through ARGS, e.g. `make run ARGS="--http-port 0"`
# (`.venv/bin/cnnserve serve --help` lists them, each with its CNNSERVE_* variable).
run: $(VENV)/.serve
	$(PY) -m service serve --model-repository $(MODEL_REPOSITORY) --port $(PORT) $(ARGS)

# Debian packages the tests run for real: prometheus + promtool (metrics), nginx (two
# replicas behind a gRPC load balancer), libb64 (Triton's perf_analyzer binary links it:
# tests/perf_analyzer.py). Installed once, when missing.
system-deps:
	@command -v promtool >/dev/null 2>&1 && command -v nginx >/dev/null 2>&1 && \
	  ldconfig -p | grep -q libb64.so.0d || { \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	  --no-install-recommends prometheus nginx-light libb64-0d; }

test: $(VENV)/.dev system-deps
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(VENV)/bin/lint-imports
	$(PY) -m mypy
	$(PY) -m pytest -q

# ruff, and the layer contracts of pyproject.toml [tool.importlinter] (import-linter).
lint: $(VENV)/.dev
	$(PY) -m ruff check . && $(PY) -m ruff format --check . && $(VENV)/bin/lint-imports

typecheck: $(VENV)/.dev
	$(PY) -m mypy

# Regenerate service/v2 from protos/. The test suite fails when the committed code is stale.
protos: $(VENV)/.dev
	$(PY) tools/protogen.py

# Retrain the example digits model and rewrite models/digits (needs the export extra).
export: $(VENV)/.dev
	$(PY) -m export train --out $(MODEL_REPOSITORY)

# Build the real image (CPU variant) without Docker and run its health check (~1-5 min).
image-test:
	bash deploy/image-test.sh cpu

# The default, GPU image (CUDA 13 from pip wheels): its CUDA libraries resolve and load (~15 min).
image-test-gpu:
	bash deploy/image-test.sh gpu

# Served vs in-process (writes bench/README.md's table), then the per-request CPU against
# the Python gRPC floor and instances: auto against in-process and a hand-picked setting;
# each runs, and the target exits 1 if a criterion failed (bench/README.md).
bench: $(VENV)/.dev
	$(PY) -m bench.run
	status=0; $(PY) -m bench.overhead --rounds 2 || status=1; \
	$(PY) -m bench.autoconfig || status=1; exit $$status

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache
