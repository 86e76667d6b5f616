# Two commands (README): `make demo` sets up and runs the demo job; `make test` sets up and runs the tests.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: setup demo test lint clean

setup: $(STAMP)

# CPU machines: torch 2.13.0 CPU from the constraints file, not a multi-GB CUDA build.
# DS_BUILD_OPS=0: DeepSpeed compiles nothing at install; training on CPU ranks skips its inference-only
# shm comm op (hybengine/runtime/distributed.py).
$(STAMP): setup.py pyproject.toml constraints/cpu.txt CMakeLists.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip setuptools wheel
	# torch before the package: setup.py builds the native CPU kernels (CMakeLists.txt) against it
	$(BIN)/pip install -q -c constraints/cpu.txt torch
	DS_BUILD_OPS=0 $(BIN)/pip install -q -c constraints/cpu.txt -e ".[dev,dali]"
	touch $(STAMP)

demo: setup
	$(BIN)/python -m hybengine.demo

lint: setup
	$(BIN)/ruff check .

# Tests in TEST_WORKERS processes, whole files to a worker (their module fixtures train once): on the
# idle 2-core dev host 480 s instead of 625 s in one process, same tests.
TEST_WORKERS ?= 2
test: lint
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile

clean:
	rm -rf runs .pytest_cache .ruff_cache
