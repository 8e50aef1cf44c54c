# Quick start:  make demo   (train + evaluate the example config on CPU)
#               make test   (lint, then the test suite; CPU, offline: what CI runs)
#               make test-fast (the unit tier, under a minute: losses, PDM, metrics, config, data, report)
# Both create .venv and install the project (pip install -e, pinned by constraints.txt) on first use.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
PIP    := $(BIN)/pip install -q -c constraints.txt
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: demo test test-fast lint clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(VENV)/.runtime: pyproject.toml requirements.txt constraints.txt | $(BIN)/python
	$(PIP) -e ".[teachers]"
	touch $@

$(VENV)/.test: $(VENV)/.runtime
	$(PIP) -e ".[teachers,test]"
	touch $@

demo: $(VENV)/.runtime
	rm -rf output/example/icsd_seed42  # the demo starts afresh each time
	$(BIN)/python retrieval.py --config configs/example/icsd.yaml

lint: $(VENV)/.test
	$(BIN)/ruff check .

test: lint
	$(BIN)/python -m pytest -q -n 2 --dist loadfile tests  # 2 workers (a file stays on one: its fixtures are made once)

UNIT_TESTS := tests/test_losses.py tests/test_pdm.py tests/test_metrics.py tests/test_config.py tests/test_data.py \
              tests/test_report.py
test-fast: $(VENV)/.test
	$(BIN)/python -m pytest -q -n 2 -m "not trains" $(UNIT_TESTS)  # no test that trains a model

clean:
	rm -rf output .pytest_cache
