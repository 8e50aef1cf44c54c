# Quick start:  make demo   (train + evaluate the example config on CPU)
#               make test   (the test suite, CPU, offline)
# Both create .venv from the requirements files on first use.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: demo test clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(VENV)/.runtime: requirements.txt | $(BIN)/python
	$(BIN)/pip install -q -r requirements.txt
	touch $@

$(VENV)/.test: requirements.txt requirements-test.txt $(VENV)/.runtime
	$(BIN)/pip install -q -r requirements-test.txt
	touch $@

demo: $(VENV)/.runtime
	rm -rf output/example/icsd_seed42  # the demo starts afresh each time
	$(BIN)/python retrieval.py --config configs/example/icsd.yaml

test: $(VENV)/.test
	$(BIN)/python -m pytest -q tests

clean:
	rm -rf output .pytest_cache
