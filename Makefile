# `make test` and `make demo` set up .venv themselves on a fresh machine.
#
# TORCH_SPEC is installed before the project so that pip never resolves a bare
# `torch` requirement on its own (which pulls a multi-GB CUDA build). The default
# is the CPU build these machines carry on local disk. GPU users, for example:
#   make test TORCH_SPEC="torch --index-url https://download.pytorch.org/whl/cu128"
PYTHON     ?= python3
VENV       ?= .venv
PY         := $(VENV)/bin/python
TORCH_SPEC ?= torch==2.13.0
PYTEST_ARGS ?=

.PHONY: install lint test test-slow test-gpu demo bench compile-check bench-kernels clean

$(VENV)/.installed: setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_SPEC)
	$(PY) -m pip install -q -e ".[test,kernels,plot]"
	touch $@

install: $(VENV)/.installed

lint: $(VENV)/.installed
	$(PY) -m ruff check .

test: $(VENV)/.installed
	$(PY) -m ruff check .
	$(PY) -m pytest -q $(PYTEST_ARGS)

test-slow: $(VENV)/.installed
	$(PY) -m pytest -q -m slow $(PYTEST_ARGS)

test-gpu: $(VENV)/.installed
	$(PY) -m pytest -q -m gpu $(PYTEST_ARGS)

demo: $(VENV)/.installed
	$(PY) -m roberta_scratch demo --out runs/demo

bench: $(VENV)/.installed
	$(PY) -m benchmarks.bench_model
	$(PY) -m benchmarks.bench_pretrain

compile-check: $(VENV)/.installed
	$(PY) -m kernels.compile_check --arch 80 90

bench-kernels: $(VENV)/.installed
	$(PY) -m benchmarks.bench_attention
	$(PY) -m benchmarks.bench_layernorm
	$(PY) -m benchmarks.bench_pretrain --config base --attention triton
	$(PY) -m benchmarks.bench_pretrain --config base --attention sdpa

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
