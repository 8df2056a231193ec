# The two commands of the README: `make quickstart` (train the default model) and `make test`.
# Both create the virtual environment .venv from the pinned requirements on first use.
VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
WORKDIR ?= workdirs/quickstart

.PHONY: quickstart test clean-venv

$(VENV)/.installed: requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps -e .
	touch $@

$(VENV)/.test-installed: $(VENV)/.installed requirements-test.txt
	$(PY) -m pip install -q -r requirements-test.txt
	touch $@

quickstart: $(VENV)/.installed
	$(PY) experiments/train.py --config=configs/quickstart.py --workdir=$(WORKDIR)

test: $(VENV)/.test-installed
	$(PY) -m pytest

clean-venv:
	rm -rf $(VENV)
