# localjax: `make train` (main job on real Fashion-MNIST), `make test` (the suite).
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
EPOCHS ?= 5
CONFIG ?= experiments/configs/fashion_mnist.py:mlp_predsim
WORKDIR ?= runs/fashion_mnist_mlp_predsim
FMNIST_DIR ?= /usr/share/datasets/fashion-mnist

# Python >= 3.12 gets jax 0.12 (3.11 stops at 0.10.2, whose CPU collectives can
# deadlock). pyenv's python3.12 shim fails unless PYENV_VERSION is set, so each
# candidate is probed by running it; python3 is the fallback.
PYTHON_BASE ?= $(shell for p in $$(ls -d "$$(pyenv root 2>/dev/null)"/versions/3.1[2-9]*/bin/python3 2>/dev/null) python3.13 python3.12 python3; do \
	"$$p" -c 'import sys; sys.exit(sys.version_info < (3, 12))' >/dev/null 2>&1 && { echo "$$p"; exit 0; }; done; echo python3)

.PHONY: venv train test data lint format clean
venv: $(VENV)/.installed
$(VENV)/.installed: pyproject.toml
	@echo "creating $(VENV) with $(PYTHON_BASE) ($$($(PYTHON_BASE) --version))"
	$(PYTHON_BASE) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test,plots,dev]'
	touch $@

data:
	@if ls $(FMNIST_DIR)/train-images-idx3-ubyte* >/dev/null 2>&1; then \
		echo "Fashion-MNIST found in $(FMNIST_DIR)"; \
	elif command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
		echo "installing Debian's dataset-fashion-mnist"; \
		(apt-get install -y -qq dataset-fashion-mnist || (apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist)); \
	else \
		echo "Fashion-MNIST not in $(FMNIST_DIR): run 'sudo apt-get install -y dataset-fashion-mnist'" \
		     "or 'make train FMNIST_DIR=/dir/with/the/four/idx/files'"; exit 1; \
	fi

train: venv data
	$(PY) -m experiments.train --config=$(CONFIG) --workdir=$(WORKDIR) \
		--config.epochs=$(EPOCHS) --config.data_dir=$(FMNIST_DIR)

# The suite is mostly single-threaded XLA compiles: one pytest worker per core (at most 4)
# halves its wall time on CI's 2 cores. TEST_WORKERS=0 runs it in one process.
TEST_WORKERS ?= auto
test: venv
	$(PY) -m pytest -q -n $(TEST_WORKERS) --maxprocesses=4 tests

lint: venv
	$(VENV)/bin/ruff check localjax experiments tests examples && $(VENV)/bin/ruff format --check localjax experiments tests examples

format: venv
	$(VENV)/bin/ruff format localjax experiments tests examples && $(VENV)/bin/ruff check --fix localjax experiments tests examples

clean:
	rm -rf $(VENV) runs .pytest_cache
