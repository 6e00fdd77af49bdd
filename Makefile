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
DEMO_ARGS  ?=
# Known-good versions of the reference libraries and test tools (see its header). With another
# TORCH_SPEC (a CUDA build wants its own triton) pass CONSTRAINTS= to install without them.
CONSTRAINTS ?= constraints.txt
EXTRAS     := test,kernels,plot,deploy,serve,tensorboard

.PHONY: install lint compat-check test test-latest test-slow test-gpu demo bench compile-check bench-kernels clean

$(VENV)/.installed: setup.cfg pyproject.toml $(CONSTRAINTS)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_SPEC)
	$(PY) -m pip install -q -e ".[$(EXTRAS)]" $(if $(CONSTRAINTS),-c $(CONSTRAINTS))
	touch $@

install: $(VENV)/.installed

lint: $(VENV)/.installed
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

test: lint
	$(PY) -m pytest -q $(PYTEST_ARGS)

# The same suite against the newest releases of everything but torch, in a venv made afresh each
# time (so nothing pinned survives), to find upstream drift on purpose rather than by a new user.
# The versions it tested are left in .venv-latest/versions.txt.
LATEST_VENV ?= .venv-latest
test-latest:
	test ! -e $(LATEST_VENV) || test -f $(LATEST_VENV)/pyvenv.cfg  # only ever delete a venv
	rm -rf $(LATEST_VENV)
	$(PYTHON) -m venv $(LATEST_VENV)
	$(LATEST_VENV)/bin/python -m pip install -q --upgrade pip
	$(LATEST_VENV)/bin/python -m pip install -q $(TORCH_SPEC)
	$(LATEST_VENV)/bin/python -m pip install -q -e ".[$(EXTRAS)]"
	$(LATEST_VENV)/bin/python -m pip freeze --exclude-editable > $(LATEST_VENV)/versions.txt
	$(LATEST_VENV)/bin/python -m ruff check .
	$(LATEST_VENV)/bin/python -m ruff format --check .
	$(LATEST_VENV)/bin/python -m pytest -q $(PYTEST_ARGS)

test-slow: $(VENV)/.installed
	$(PY) -m pytest -q -m slow $(PYTEST_ARGS)

test-gpu: $(VENV)/.installed
	$(PY) -m pytest -q -m gpu $(PYTEST_ARGS)

demo: $(VENV)/.installed
	$(PY) -m roberta_scratch demo --out runs/demo $(DEMO_ARGS)

bench: $(VENV)/.installed
	$(PY) -m benchmarks.bench_model
	$(PY) -m benchmarks.bench_pretrain

compile-check: $(VENV)/.installed
	$(PY) -m roberta_kernels.compile_check --arch 80 90

bench-kernels: $(VENV)/.installed
	$(PY) -m benchmarks.bench_attention
	$(PY) -m benchmarks.bench_layernorm
	$(PY) -m benchmarks.bench_pretrain --config base --attention triton
	$(PY) -m benchmarks.bench_pretrain --config base --attention sdpa

clean:
	rm -rf $(VENV) $(LATEST_VENV) *.egg-info kernels/*.egg-info .pytest_cache

# On a lent GPU (no venv, no network): correctness, kernel timings and end to end, within a budget.
.PHONY: gpu-check
gpu-check:
	python3 benchmarks/gpu_suite.py --out gpu-results

# The oldest triton the kernels claim (setup.cfg) is the one on the lent GPU machines: its
# interpreter tests and an ahead-of-time compile for sm_80 and sm_90, in a venv of its own.
TRITON_OLDEST ?= 3.6.0
compat-check: $(VENV)/.installed
	test -x .venv-triton-oldest/bin/python || $(PYTHON) -m venv .venv-triton-oldest
	.venv-triton-oldest/bin/python -m pip install -q $(TORCH_SPEC) "triton==$(TRITON_OLDEST)" numpy pytest hypothesis
	.venv-triton-oldest/bin/python -m pip install -q --no-deps -e .
	.venv-triton-oldest/bin/python -m pip install -q regex sentencepiece safetensors tqdm
	.venv-triton-oldest/bin/python -m pytest -q tests/test_kernels_attention.py tests/test_kernels_layernorm.py tests/test_kernels_model.py
	env -u TRITON_INTERPRET .venv-triton-oldest/bin/python -m roberta_kernels.compile_check --arch 80 90

