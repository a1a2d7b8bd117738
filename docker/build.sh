#!/usr/bin/env bash
# Build the component image with an immutable tag: <version>-<git short sha>[-dirty].
# Usage: docker/build.sh [registry/name]   (default ghcr.io/augpaint/augpaint)
# Then compile with the same tag: AUGPAINT_IMAGE=<printed image> augpaint compile
set -euo pipefail
cd "$(dirname "$0")/.."
name="${1:-ghcr.io/augpaint/augpaint}"
version=$(python3 -c "import tomllib;print(tomllib.load(open('pyproject.toml','rb'))['project']['version'])")
sha=$(git rev-parse --short=12 HEAD)
dirty=$(git diff --quiet && git diff --cached --quiet || echo "-dirty")
image="${name}:${version}-${sha}${dirty}"
docker build -f docker/Dockerfile -t "$image" .
echo "$image"
