# Two commands do everything on a fresh machine: `make demo` and `make test`.
# Both create .venv from the pinned requirement files first; nothing else needs installing.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

# DDS discovery stays on loopback; each run picks its own domain (tests refine this per run).
export ROS_AUTOMATIC_DISCOVERY_RANGE := LOCALHOST
export OPENBLAS_NUM_THREADS ?= 1
export PYTHONDONTWRITEBYTECODE := 1

.PHONY: venv test lint demo bench flops default-model clean

venv: $(STAMP)

$(STAMP): requirements.txt requirements-test.txt setup.py setup.cfg package.xml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip setuptools wheel
	$(PY) -m pip install --quiet -r requirements.txt -r requirements-test.txt
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $@

test: $(STAMP)
	$(VENV)/bin/flake8 obstacle_classifier test benchmarks setup.py launch
	$(PY) -m pytest

lint: $(STAMP)
	$(VENV)/bin/flake8 obstacle_classifier test benchmarks setup.py launch

demo: $(STAMP)
	$(PY) -m obstacle_classifier.demo

bench: $(STAMP)
	$(PY) benchmarks/bench_nn.py --results benchmarks/results.md

# The shipped model: simulate six worlds, train, tune thresholds, score on a held-out world.
default-model: $(STAMP)
	$(PY) -m obstacle_classifier.default_model --output config/default_model.npz

flops: $(STAMP)
	$(VENV)/bin/obstacle-classifier flops --d 16 --h 64 --c 8 --n 10000

clean:
	rm -rf $(VENV) build install log *.egg-info .pytest_cache .hypothesis
