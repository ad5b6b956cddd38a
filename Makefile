# Every set-up step lives here: a clean clone needs only python3 (3.11/3.12) and PyPI.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# Project-local Prefect database, so runs of this project show up in `prefect server start` later.
export PREFECT_HOME ?= $(CURDIR)/.prefect

.PHONY: install data demo test clean

install: $(VENV)/.installed
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

data: data/vader.csv
data/vader.csv: | $(VENV)/.installed
	$(BIN)/lora-pipeline fetch-data

# All four VADER domains on the default config; prints the results table and how to open the UIs.
demo: install data
	$(BIN)/lora-pipeline run

test: install data
	$(BIN)/python -m pytest -p no:cacheprovider --durations=8

clean:
	rm -rf .lora_pipeline mlartifacts mlflow.db .prefect
