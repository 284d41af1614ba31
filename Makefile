# Two commands on a fresh machine: `make demo` and `make test`. Everything runs from .venv/.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: venv demo test bench bench-imagined lint format clean

venv: $(STAMP)

# torch is pinned by constraints.txt to the CPU build (installed from the local wheel here);
# anything else would pull gigabytes of CUDA packages.
$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt -e ".[dev]"
	touch $(STAMP)

demo: venv
	$(BIN)/continuonbrain demo $(DEMO_ARGS)

test: venv
	$(BIN)/python -m pytest -q

# Every benchmark whose figures are in BENCHMARKS.md (tens of minutes on 2 cores); results in bench/results/.
bench: venv
	$(BIN)/python bench/bench_rlds.py
	$(BIN)/python bench/bench_infer.py
	$(BIN)/python bench/bench_train.py
	$(BIN)/python bench/bench_adapt.py
	$(BIN)/python bench/bench_api.py
	$(BIN)/python bench/bench_reflex.py

# The imagined-rollouts experiment: several seeds x (train, imagine, retrain, evaluate); ~20 minutes.
bench-imagined: venv
	$(BIN)/python bench/bench_imagined.py

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: venv
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis .demo
