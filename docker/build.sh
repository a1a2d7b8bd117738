#!/usr/bin/env bash
# Build the component image (and the MLflow server image) with immutable tags:
#   <registry>/augpaint:<version>-<git short sha>[-dirty]   <registry>/mlflow-server:<mlflow version>
# A clean tree also gets <registry>/augpaint:<version>, the components' default image
# (components/__init__.py); compile with the immutable tag for reproducible runs.
# Usage: docker/build.sh [--print] [registry]   (default registry ghcr.io/augpaint)
#   --print  only print the image names (no Docker engine needed)
# Then compile with the same tag:  augpaint compile --image <printed augpaint image> --config configs/paper.yaml
set -euo pipefail
cd "$(dirname "$0")/.."
print_only=0
if [[ "${1:-}" == "--print" ]]; then print_only=1; shift; fi
registry="${1:-ghcr.io/augpaint}"
py=$( [[ -x .venv/bin/python ]] && echo .venv/bin/python || echo python3 )
version=$("$py" -c "import tomllib;print(tomllib.load(open('pyproject.toml','rb'))['project']['version'])")
sha=$(git rev-parse --short=12 HEAD)
dirty=$(git diff --quiet HEAD -- . ':!*.md' 2>/dev/null && echo "" || echo "-dirty")
# The kfp that compiles the pipeline is the kfp baked into the image.
kfp_version=$("$py" -c "import kfp; print(kfp.__version__)" 2>/dev/null || grep -oP '^kfp==\K.*' requirements.txt)
mlflow_version=$(grep -oP '^mlflow==\K.*' requirements.txt)
image="${registry}/augpaint:${version}-${sha}${dirty}"
# The release tag only for clean trees: a dirty build must not replace what the default points at.
release_image=$( [[ -z "$dirty" ]] && echo "${registry}/augpaint:${version}" || echo "" )
mlflow_image="${registry}/mlflow-server:${mlflow_version}"
if (( print_only )); then
  echo "$image"
  echo "$mlflow_image"
  [[ -n "$release_image" ]] && echo "$release_image"
  exit 0
fi
docker build -f docker/Dockerfile --build-arg "KFP_VERSION=${kfp_version}" -t "$image" \
  ${release_image:+-t "$release_image"} .
docker build -f docker/mlflow.Dockerfile -t "$mlflow_image" .
echo "$image"
echo "$mlflow_image"
[[ -n "$release_image" ]] && echo "$release_image"
exit 0
