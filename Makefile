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

.PHONY: demo test compile clean venv lock image manifests

venv: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -r requirements.txt 2>&1 | $(QUIET)
	$(PIP) install --no-deps -e . 2>&1 | $(QUIET)
	$(BIN)/python -c "import augpaint_core.stages, kfp, mlflow, monai" 
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/augpaint run --config configs/demo.yaml --out runs/demo

# CPU only, so a GPU host does not change what the tests expect; GPU checks: benchmarks/gpu_check.sh
test: $(STAMP)
	CUDA_VISIBLE_DEVICES="" $(BIN)/python -m pytest tests

compile: $(STAMP)
	$(BIN)/augpaint compile --out augpaint_pipeline.yaml

# The image's pins: every package of the tested .venv (docker/constraints.txt).
lock: $(STAMP)
	{ echo "# Every package of the tested environment, pinned (pip freeze of .venv, CPU suffixes dropped)."; \
	  echo "# The image installs requirements.txt under these constraints; refresh with: make lock"; \
	  $(BIN)/pip freeze --disable-pip-version-check 2>/dev/null | grep -v '^-e\|^augpaint\|@ file\|^#' | \
	  sed 's/+cpu$$//'; } > docker/constraints.txt

image:
	docker/build.sh

manifests:
	for o in manifests/overlays/*/; do kubectl kustomize $$o > /dev/null && echo "rendered $$o"; done

clean:
	rm -rf runs mlflow.db mlartifacts augpaint_pipeline.yaml
