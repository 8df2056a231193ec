# The commands of the README: `make quickstart` (train the default model), `make test` and `make benchmark`.
# All create the virtual environment .venv from the pinned requirements on first use.
VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
WORKDIR ?= workdirs/quickstart
TEST_WORKERS ?= 2  # pytest-xdist processes: compilation is single-threaded, so 2 cores run 2 tests at once
BENCHMARK_ARGS ?= --sizes=tiny,small --meshes=data=-1

.PHONY: quickstart test benchmark clean-venv

$(VENV)/.installed: requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps -e .
	touch $@

$(VENV)/.test-installed: $(VENV)/.installed requirements-test.txt requirements-tf.txt
	$(PY) -m pip install -q -r requirements-test.txt
	touch $@

quickstart: $(VENV)/.installed
	$(PY) experiments/train.py --config=configs/quickstart.py --workdir=$(WORKDIR)

test: $(VENV)/.test-installed
	$(PY) -m pytest -n $(TEST_WORKERS)

benchmark: $(VENV)/.installed
	$(PY) experiments/benchmark.py $(BENCHMARK_ARGS)

clean-venv:
	rm -rf $(VENV)
