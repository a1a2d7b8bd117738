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

.PHONY: demo test test-fast tools compile clean venv lock image image-test manifests

venv: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -r requirements.txt 2>&1 | $(QUIET)
	$(PIP) install --no-deps -e . 2>&1 | $(QUIET)
	$(BIN)/python -c "import augpaint_core.stages, kfp, mlflow, monai" 
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/augpaint run --config configs/demo.yaml --out runs/demo

# The tests render the manifests with kubectl and stamp image tags with git: say so once, up front.
tools:
	@missing=""; for t in kubectl git; do command -v $$t > /dev/null || missing="$$missing $$t"; done; \
	if [ -n "$$missing" ]; then echo "make test: needs$$missing on PATH (kubectl renders manifests/, git stamps image tags); install them and rerun" >&2; exit 2; fi

# Everything, with the 15 slowest tests listed (CI: .ci/run).
# CPU only, so a GPU host does not change what the tests expect; GPU checks: benchmarks/gpu_check.sh
test: tools $(STAMP)
	CUDA_VISIBLE_DEVICES="" $(BIN)/python -m pytest --durations=15 tests

# Without the tests marked slow (pipelines end to end, servers, multi-process training).
test-fast: tools $(STAMP)
	CUDA_VISIBLE_DEVICES="" $(BIN)/python -m pytest --durations=15 -m "not slow" tests

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

# docker/Dockerfile on a Debian stand-in base (podman, CPU torch wheel), then the tiny pipeline with every
# component in that image (kfp.local.DockerRunner). Root only: installs podman with apt-get when missing.
image-test: $(STAMP)
	docker/image_test.sh

manifests:
	for o in manifests/overlays/*/; do kubectl kustomize $$o > /dev/null && echo "rendered $$o"; done

clean:
	rm -rf runs mlflow.db mlartifacts augpaint_pipeline.yaml
