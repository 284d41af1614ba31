# Two commands on a fresh machine: `make demo` and `make test`. Everything runs from .venv/.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

# Side environments for the interop tests (tests/interop/): the real tensorflow-datasets and
# the real peft, which the main venv does not carry. `make interop-venvs` creates them.
TFDS_VENV := .venv-tfds
PEFT_VENV := .venv-peft
INTEROP := tests/interop

.PHONY: venv interop-venvs demo test test-main test-interop bench bench-imagined lint format clean

venv: $(STAMP)

# torch is pinned by constraints.txt to the CPU build (installed from the local wheel here);
# anything else would pull gigabytes of CUDA packages.
$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt -e ".[dev,donkey-test]"
	touch $(STAMP)

# .venv-tfds: tensorflow-cpu + tensorflow-datasets, and the project with --no-deps (its rlds
# part needs only the light runtime dependencies listed in the requirements file; no torch).
$(TFDS_VENV)/.installed: pyproject.toml constraints.txt $(INTEROP)/requirements-tfds.txt
	test -x $(TFDS_VENV)/bin/python || $(PYTHON) -m venv $(TFDS_VENV)
	$(TFDS_VENV)/bin/pip install --quiet --upgrade pip
	$(TFDS_VENV)/bin/pip install --quiet -c constraints.txt -r $(INTEROP)/requirements-tfds.txt
	$(TFDS_VENV)/bin/pip install --quiet --no-deps -e .
	touch $@

# .venv-peft: the project with its own dependencies plus peft, torch pinned by constraints.txt
# (checked after the install: peft's transformers/accelerate must not have moved it).
$(PEFT_VENV)/.installed: pyproject.toml constraints.txt $(INTEROP)/requirements-peft.txt
	test -x $(PEFT_VENV)/bin/python || $(PYTHON) -m venv $(PEFT_VENV)
	$(PEFT_VENV)/bin/pip install --quiet --upgrade pip
	$(PEFT_VENV)/bin/pip install --quiet -c constraints.txt -e . -r $(INTEROP)/requirements-peft.txt
	$(PEFT_VENV)/bin/python -c "import torch; v = torch.__version__; assert v.split('+')[0] == '2.13.0', v"
	touch $@

interop-venvs: $(TFDS_VENV)/.installed $(PEFT_VENV)/.installed

demo: venv
	$(BIN)/continuonbrain demo $(DEMO_ARGS)

# The main suite, then the interop tests in each side environment (README.md, "Interop tests").
test: test-main test-interop

test-main: venv
	$(BIN)/python -m pytest -q

# tests/interop/test_<env>_*.py run in .venv-<env>. A side env that was not created is
# skipped with a note, except under CI=true, where it is a failure.
test-interop:
	@status=0; for env in tfds peft; do \
	  venv=.venv-$$env; \
	  if [ -f $$venv/.installed ]; then \
	    echo "== interop tests in $$venv"; \
	    $$venv/bin/python -m pytest -q $(INTEROP)/test_$${env}_*.py || status=1; \
	  elif [ "$$CI" = true ]; then \
	    echo "FAILED: $$venv does not exist; CI must run the $$env interop tests (make interop-venvs)"; status=1; \
	  else \
	    echo "skipped the $$env interop tests: $$venv does not exist (make interop-venvs creates it)"; \
	  fi; \
	done; exit $$status

# Every benchmark whose figures are in BENCHMARKS.md (tens of minutes on 2 cores); results in bench/results/.
bench: venv
	$(BIN)/python bench/bench_rlds.py
	$(BIN)/python bench/bench_infer.py
	$(BIN)/python bench/bench_train.py
	$(BIN)/python bench/bench_adapt.py
	$(BIN)/python bench/bench_api.py
	$(BIN)/python bench/bench_reflex.py
	$(BIN)/python bench/bench_gate.py

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
	rm -rf $(VENV) $(TFDS_VENV) $(PEFT_VENV) .pytest_cache .ruff_cache .hypothesis .demo
