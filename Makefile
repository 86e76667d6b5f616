# Two commands (README): `make demo` sets up and runs the demo job; `make test` sets up and runs the tests.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
BASE   := $(VENV)/.installed-base

.PHONY: setup setup-demo demo test lint clean

# Two set-ups in one .venv: the demo's (torch and the package: all the demo imports) and the tests'
# (that plus the dev tools, DeepSpeed, Triton and DALI). DALI has no CPU-only wheel: its CPU pipelines,
# which the tests run, need the CUDA wheel (~200 MB), so only `make test` installs it.
setup: $(STAMP)
setup-demo: $(BASE)

# CPU machines: torch 2.13.0 CPU from the constraints file, not a multi-GB CUDA build.
$(BASE): setup.py pyproject.toml constraints/cpu.txt CMakeLists.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip setuptools wheel
	# torch before the package: setup.py builds the native CPU kernels (CMakeLists.txt) against it
	$(BIN)/pip install -q -c constraints/cpu.txt torch
	$(BIN)/pip install -q -c constraints/cpu.txt -e .
	touch $(BASE)

# DS_BUILD_OPS=0: DeepSpeed compiles nothing at install; training on CPU ranks skips its inference-only
# shm comm op (hybengine/runtime/distributed.py).
$(STAMP): $(BASE)
	DS_BUILD_OPS=0 $(BIN)/pip install -q -c constraints/cpu.txt -e ".[dev,dali]"
	touch $(STAMP)

demo: setup-demo
	$(BIN)/python -m hybengine.demo

lint: setup
	$(BIN)/ruff check .

# Tests in TEST_WORKERS processes, whole files to a worker (their module fixtures train once), each
# process and its children on one CPU thread (two workers on two cores: a second thread only spin-waits;
# tests of threaded kernels set their own counts).
TEST_WORKERS ?= 2
test: lint
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile

clean:
	rm -rf runs .pytest_cache .ruff_cache
