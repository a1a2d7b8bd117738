#!/usr/bin/env bash
# make image-test: build docker/Dockerfile on a Debian stand-in base with the CPU torch wheel (podman,
# no registry needed) and run the tiny pipeline with kfp.local.DockerRunner, so every component runs
# inside the image as its non-root user; tests/image/run_in_image.py checks the outputs.
#
# The pinned CUDA base (docker/build.sh) cannot be pulled without a registry, so this proves the
# Dockerfile's steps, the pins and the components inside a container, not the CUDA base itself.
#
# Needs root (installs podman etc. with apt-get when missing). Environment:
#   AUGPAINT_IMAGE_TEST_DIR  scratch and cache (default /var/tmp/augpaint-image-test); the Debian base
#                            tarball and podman's layers are reused from there when present, never required.
#   TORCH_WHEELS             folder holding the CPU torch wheel (default: pip's find-links, else /opt/wheels).
# The body is one function, so bash parses it whole before running (safe to edit while it runs).
main() {
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
t_start=$(date +%s)
SCRATCH=${AUGPAINT_IMAGE_TEST_DIR:-/var/tmp/augpaint-image-test}
PY=${PYTHON:-.venv/bin/python}
IMAGE=localhost/augpaint:image-test
BASE=localhost/augpaint-standin-base:bookworm
SUITE=bookworm
PACKAGES=python3,python3-venv,ca-certificates,passwd
step() { echo "== image-test [$(( $(date +%s) - t_start )) s] $*"; }
die() { echo "image-test: $*" >&2; exit 2; }

[[ $(id -u) == 0 ]] || die "needs root (apt-get, podman storage in $SCRATCH)"
[[ -x $PY ]] || die "$PY not found: run 'make venv' first"

# 1. Tools, from Debian packages.
need=()
for tool in podman:podman runc:runc mmdebstrap:mmdebstrap newuidmap:uidmap iptables:iptables \
            /usr/lib/cni/bridge:containernetworking-plugins; do
  command -v "${tool%%:*}" > /dev/null || [[ -x ${tool%%:*} ]] || need+=("${tool#*:}")
done
if (( ${#need[@]} )); then
  step "installing ${need[*]}"
  apt-get -o DPkg::Lock::Timeout=600 update -qq
  DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq "${need[@]}" > /dev/null
fi

# 2. Podman settings that work on these machines (runc, cgroupfs, file events; see README "Container image").
mkdir -p "$SCRATCH/conf" "$SCRATCH/cache" "$SCRATCH/storage" "$SCRATCH/runroot"
cat > "$SCRATCH/conf/containers.conf" <<EOF
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
EOF
cat > "$SCRATCH/conf/storage.conf" <<EOF
[storage]
driver = "overlay"
graphroot = "$SCRATCH/storage"
runroot = "$SCRATCH/runroot"
EOF
export CONTAINERS_CONF=$SCRATCH/conf/containers.conf CONTAINERS_STORAGE_CONF=$SCRATCH/conf/storage.conf

# 3. Torch: the machine's CPU wheel (the image would otherwise pull the CUDA build from PyPI).
torch_pin=$(grep -oP '^torch==\K\S+' requirements.txt)
candidates=${TORCH_WHEELS:-$("$PY" -m pip config get global.find-links 2>/dev/null || true) /opt/wheels}
wheels=""
for dir in $candidates; do
  if ls "$dir"/torch-"$torch_pin"+cpu-cp311-*.whl > /dev/null 2>&1; then wheels=$dir; break; fi
done
[[ -n $wheels ]] || die "no torch-$torch_pin+cpu cp311 wheel in: $candidates (set TORCH_WHEELS)"

# 4. Stand-in base: Debian bookworm (python 3.11, like the CPU wheel) with a venv on PATH where the CUDA
#    base has conda's python and pip. Made with mmdebstrap from the apt sources this machine uses.
sources=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.sources /etc/apt/sources.list.d/*.list 2>/dev/null \
          | grep -v '^#' || true)
key=$(printf '%s\n' "$SUITE" "$PACKAGES" "venv-v1" "$sources" | sha256sum | cut -c1-16)
tarball=$SCRATCH/cache/debian-$SUITE-$key.tar
if [[ -s $tarball ]]; then
  step "base root filesystem: cached $tarball"
else
  step "base root filesystem: mmdebstrap $SUITE (about 2 min)"
  srcfile=$(ls /etc/apt/sources.list.d/debian.sources 2>/dev/null || echo /etc/apt/sources.list)
  rm -f "$tarball".partial
  mmdebstrap --quiet --variant=minbase --include="$PACKAGES" \
    --aptopt='Acquire::Check-Valid-Until "false"' --aptopt='Acquire::Check-Date "false"' \
    --customize-hook='chroot "$1" python3 -m venv /opt/venv' \
    --customize-hook='rm -rf "$1"/var/cache/apt/* "$1"/var/lib/apt/lists/*' \
    --format=tar "$SUITE" "$tarball".partial "$srcfile"
  mv "$tarball".partial "$tarball"  # only a finished tarball is ever reused
fi
base_id=$(podman image inspect --format '{{index .Labels "augpaint.base-key"}}' "$BASE" 2>/dev/null || true)
if [[ $base_id != "$key" ]]; then
  step "importing the base as $BASE"
  podman import --quiet \
    --change 'ENV PATH=/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV PIP_FIND_LINKS=/wheels' --change "LABEL augpaint.base-key=$key" \
    "$tarball" "$BASE" > /dev/null
fi

# 5. The project image: docker/Dockerfile unchanged, on the stand-in base. Downloads go through the
#    machine's proxy, hence the host CA bundle; the torch wheel folder is mounted at the base's find-links.
step "building $IMAGE from docker/Dockerfile"
kfp_version=$("$PY" -c "import kfp; print(kfp.__version__)")
ca=/etc/ssl/certs/ca-certificates.crt
podman build --pull=never --network=host -f docker/Dockerfile \
  --build-arg BASE_IMAGE="$BASE" --build-arg KFP_VERSION="$kfp_version" \
  -v "$wheels:/wheels:ro" $( [[ -f $ca ]] && echo "-v $ca:$ca:ro" ) \
  -t "$IMAGE" . > "$SCRATCH/build.log" 2>&1 \
  || { tail -n 40 "$SCRATCH/build.log" >&2; die "podman build failed (log: $SCRATCH/build.log)"; }
podman image prune --force > /dev/null  # drop the layers of earlier builds, keep the cache small
size=$(podman image inspect --format '{{.Size}}' "$IMAGE")
step "image $IMAGE: $(( size / 1000000 )) MB"

# 6. The tiny pipeline, each component in a container, through podman's Docker-API socket.
sock=$SCRATCH/podman.sock
rm -f "$sock"
podman system service --time=0 "unix://$sock" &
service_pid=$!
trap 'kill "$service_pid" 2>/dev/null || true' EXIT
trap 'exit 143' TERM
trap 'exit 130' INT
for _ in $(seq 50); do [[ -S $sock ]] && break; sleep 0.2; done
[[ -S $sock ]] || die "podman's API socket $sock did not appear"
step "running the tiny pipeline with kfp.local.DockerRunner"
out=$SCRATCH/run
rm -rf "$out"
DOCKER_HOST=unix://$sock AUGPAINT_IMAGE=$IMAGE PYTHONPATH=$REPO "$PY" tests/image/run_in_image.py --out "$out" \
  2>&1 | tee "$SCRATCH/run.log"
step "done (image $(( size / 1000000 )) MB)"
tail -n 1 "$SCRATCH/run.log"  # the checker's 'image-test: N passed, N failed', last
}
main "$@"
