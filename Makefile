# Two commands do all the set-up: `make demo` and `make test`. Both build .venv first.
SHELL := /bin/bash
.SHELLFLAGS := -o pipefail -c
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# pip on this machine family also looks in local wheel folders; silence its notices about missing ones.
PIP := $(BIN)/pip --disable-pip-version-check -q
QUIET := { grep -v "is ignored: it is neither a file nor a directory" || true; }

.PHONY: demo test compile clean venv

venv: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -r requirements.txt 2>&1 | $(QUIET)
	$(PIP) install --no-deps -e . 2>&1 | $(QUIET)
	$(BIN)/python -c "import augpaint_core.stages, kfp, mlflow, monai" 
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/augpaint run --config configs/demo.yaml --out runs/demo

test: $(STAMP)
	$(BIN)/python -m pytest tests

compile: $(STAMP)
	$(BIN)/augpaint compile --out augpaint_pipeline.yaml

clean:
	rm -rf runs mlflow.db mlartifacts augpaint_pipeline.yaml
