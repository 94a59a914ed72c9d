# pneumo-exp: `make help` lists the targets. The first target run creates .venv.
ARCH       ?= aug_cnn
PYTHON     ?= python3
VENV       ?= .venv
# TensorFlow build: cpu, or gpu (the CUDA wheels)
TF         ?= cpu
BIN        := $(VENV)/bin
STAMP      := $(VENV)/.installed-$(TF)

# Optional overrides of experiments/$(ARCH).yaml, passed to `pneumo-exp search`.
SEARCH_ARGS = $(if $(DATA),--data $(DATA)) $(if $(MAX_TRIALS),--max-trials $(MAX_TRIALS)) \
  $(if $(EPOCHS),--epochs $(EPOCHS)) $(if $(TUNER),--tuner $(TUNER)) \
  $(if $(IMAGE_SIZE),--image-size $(IMAGE_SIZE)) $(if $(SEED),--seed $(SEED)) \
  $(if $(TIME_BUDGET),--time-budget $(TIME_BUDGET)) $(if $(NAME),--name $(NAME)) \
  $(if $(FRESH),--fresh) $(if $(WORKERS),--workers $(WORKERS))

.DEFAULT_GOAL := help
CV_ARGS = $(if $(DATA),--data $(DATA)) $(if $(FOLDS),--folds $(FOLDS)) \
  $(if $(FROM),--from $(FROM)) $(if $(EPOCHS),--epochs $(EPOCHS)) \
  $(if $(IMAGE_SIZE),--image-size $(IMAGE_SIZE)) $(if $(SEED),--seed $(SEED))

MODEL ?= models:/pneumonia-classifier@champion

PORT  ?= 5001
# mlflow's own commands need the store's URI; pneumo-exp defaults to the same one.
STORE := $${MLFLOW_TRACKING_URI:-sqlite:///$(CURDIR)/mlruns/mlflow.db}

.PHONY: help install bench data search cv promote evaluate predict serve server ui test lint clean

help: ## List the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -qq --upgrade pip
	$(BIN)/pip install -qq -e ".[$(TF),dev]"
	rm -f $(VENV)/.installed-* && touch $@

install: $(STAMP) ## Create .venv and install the package (TF=gpu for CUDA)

search: $(STAMP) ## Search ARCH [DATA= MAX_TRIALS= EPOCHS= TUNER= IMAGE_SIZE= SEED= TIME_BUDGET= NAME= FRESH=1 WORKERS=]
	$(BIN)/pneumo-exp search $(ARCH) $(SEARCH_ARGS)

data: $(STAMP) ## Download or unpack a dataset archive: make data SOURCE=url-or-zip [TO=data/chest_xray]
	$(BIN)/pneumo-exp data fetch $(SOURCE) $(if $(TO),--to $(TO))

cv: $(STAMP) ## Cross-validate ARCH [FOLDS=5 FROM=default|best DATA= EPOCHS= IMAGE_SIZE= SEED=]
	$(BIN)/pneumo-exp cv $(ARCH) $(CV_ARGS)

promote: $(STAMP) ## Register the best validation trial [ARCH=], evaluate it once on test
	$(BIN)/pneumo-exp promote $(if $(filter command line,$(origin ARCH)),$(ARCH))

evaluate: $(STAMP) ## Evaluate MODEL= (default the champion) on a labelled folder DATA=
	$(BIN)/pneumo-exp evaluate --model $(MODEL) --data $(DATA)

predict: $(STAMP) ## Probability of pneumonia for FILES= (files or folders) with MODEL=
	$(BIN)/pneumo-exp predict --model $(MODEL) $(FILES)

serve: $(STAMP) ## Serve MODEL= over HTTP on 127.0.0.1 (PORT=5001), with mlflow models serve
	MLFLOW_TRACKING_URI=$(STORE) PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/mlflow models serve \
	  -m $(MODEL) --env-manager local -h 127.0.0.1 -p $(PORT)

server: $(STAMP) ## MLflow tracking server [HOST=127.0.0.1 SERVER_PORT=5000 BACKEND= ARTIFACTS= SERVER_WORKERS=4]
	$(BIN)/pneumo-exp server $(if $(HOST),--host $(HOST)) $(if $(SERVER_PORT),--port $(SERVER_PORT)) \
	  $(if $(BACKEND),--backend-store-uri $(BACKEND)) $(if $(ARTIFACTS),--artifacts-destination $(ARTIFACTS)) \
	  $(if $(SERVER_WORKERS),--workers $(SERVER_WORKERS))

ui: $(STAMP) ## Serve the MLflow UI of ./mlruns on http://127.0.0.1:5000
	$(BIN)/pneumo-exp ui

test: $(STAMP) ## Run the tests [PYTEST_ARGS=, e.g. "-n 0 -k registry"]
	$(BIN)/pytest $(PYTEST_ARGS)

bench: $(STAMP) ## Input-pipeline benchmark vs the study's, on DATA= (installs tf-keras for it)
	$(BIN)/pip install -qq --no-deps -r bench/requirements.txt  # its dependency is TensorFlow, already here
	$(BIN)/python bench/pipeline.py $(if $(DATA),--data $(DATA))

lint: $(STAMP) ## ruff
	$(BIN)/ruff check .

clean: ## Delete the MLflow store, tuner state and decode cache (keeps .venv)
	rm -rf mlruns mlartifacts .pneumo .pytest_cache .ruff_cache
