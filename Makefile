# pneumo-exp: `make help` lists the targets, `make vars` their variables. The first target
# run creates .venv. Targets pass their variables (ARCH=, DATA=, MAX_TRIALS=, ...) to
# `pneumo-exp --make <command>`, which reads them from the environment: the option table in
# pneumo_exp/cli/options.py is the one list of them. `make -f path/to/Makefile ...` works from
# any folder: runs and state land in that folder.
ROOT       := $(dir $(abspath $(lastword $(MAKEFILE_LIST))))
PYTHON     ?= python3
VENV       ?= $(ROOT).venv
# TensorFlow build: cpu, or gpu (the CUDA wheels)
TF         ?= cpu
BIN        := $(VENV)/bin
STAMP      := $(VENV)/.installed-$(TF)
RUN        := $(BIN)/pneumo-exp --make

.DEFAULT_GOAL := help
.PHONY: help vars install bench data search cv promote adapt site-check evaluate predict explain serve \
        server ui runs compare models delete-search cache test test-slow test-all lint clean

help: ## List the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-14s %s\n", $$1, $$2}'
	@echo "  Variables of each target: make vars"

vars: $(STAMP) ## List the make variables of every target (pneumo_exp/cli/options.py)
	@$(BIN)/pneumo-exp vars

$(STAMP): $(ROOT)pyproject.toml
	$(BIN)/python -m pip --version >/dev/null 2>&1 || $(PYTHON) -m venv --clear $(VENV)  # new, or cut short
	$(BIN)/pip install -qq --upgrade pip
	$(BIN)/pip install -qq -e "$(ROOT)[$(TF),dev]"
	rm -f $(VENV)/.installed-* && touch $@

install: $(STAMP) ## Create .venv and install the package (TF=gpu for CUDA)

data: $(STAMP) ## Download or unpack a dataset archive SOURCE= (URL or file) into data/chest_xray [TO=]
	$(BIN)/pneumo-exp data fetch "$(SOURCE)" $(if $(TO),--to "$(TO)")

search: $(STAMP) ## Search ARCH (default aug_cnn) [DATA= MAX_TRIALS= EPOCHS= TUNER= SEED= ...]
	$(RUN) search

cv: $(STAMP) ## Cross-validate ARCH [FOLDS=5 FROM=default|best DATA= EPOCHS= ...]
	$(RUN) cv

promote: $(STAMP) ## Register the best validation trials as one model [ARCH= TOP=3; TOP=1: the best alone], test it once
	$(RUN) promote

adapt: $(STAMP) ## Adapt MODEL= to a site's unlabeled images DATA=, registered as site-SITE
	$(RUN) adapt

site-check: $(STAMP) ## Before labels: do a site's unlabeled images DATA= look like the training data to MODEL=?
	$(RUN) site-check

evaluate: $(STAMP) ## Evaluate MODEL= (default the champion) on a labelled folder DATA=
	$(RUN) evaluate

predict: $(STAMP) ## Probability of pneumonia for FILES= (files or folders) with MODEL=
	$(RUN) predict

explain: $(STAMP) ## Grad-CAM overlays of MODEL= on FILES= into OUT= (default explanations/)
	$(RUN) explain

serve: $(STAMP) ## Serve MODEL= over HTTP on 127.0.0.1 (PORT=5001)
	$(RUN) serve

server: $(STAMP) ## MLflow tracking server [HOST=127.0.0.1 PORT=5000 BACKEND= ARTIFACTS= WORKERS=4 AUTH=1 INSECURE=1]
	$(RUN) server

ui: $(STAMP) ## Serve the MLflow UI of ./mlruns on http://127.0.0.1:5000
	$(RUN) ui

runs: $(STAMP) ## List the searches and cross-validations, newest first [NAME= one search's trials, IMPORTANCE=1]
	$(RUN) runs

compare: $(STAMP) ## Compare searches SEARCHES="a b": best so far against time and trials [OUT=compare.png]
	$(RUN) compare

models: $(STAMP) ## List the registered versions with aliases and figures
	$(RUN) models

delete-search: $(STAMP) ## Delete the search NAME= (its runs and tuner state) [YES=1]
	$(RUN) delete-search

cache: $(STAMP) ## What the state folder keeps, where, how large [CLEAR=images|pacs|all OLDER_THAN=days]
	$(RUN) cache

test: $(STAMP) ## Run the tests, but the slow end-to-end ones [PYTEST_ARGS=, e.g. "-n 0 -k registry"]
	$(BIN)/pytest -m "not slow" $(PYTEST_ARGS)

test-slow: $(STAMP) ## Run the slow end-to-end tests (several processes and servers each)
	$(BIN)/pytest -m slow $(PYTEST_ARGS)

test-all: $(STAMP) ## Run every test
	$(BIN)/pytest $(PYTEST_ARGS)

bench: $(STAMP) ## Input-pipeline benchmark vs the study's, on DATA= (installs tf-keras for it)
	$(BIN)/pip install -qq --no-deps -r bench/requirements.txt  # its dependency is TensorFlow, already here
	$(BIN)/python bench/pipeline.py $(if $(DATA),--data $(DATA))

lint: $(STAMP) ## ruff
	$(BIN)/ruff check .

clean: ## Delete the MLflow store, tuner state and decode cache (keeps .venv)
	rm -rf mlruns mlartifacts .pneumo .pytest_cache .ruff_cache
