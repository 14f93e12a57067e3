#!/usr/bin/env bash
# Build container images: deploy/docker/images.sh TARGET... (make images / images-gpu).
# Env: TAG (latest), BASE_IMAGE, TORCH_INDEX_URL, DOCKER (a CLI that builds with BuildKit),
# PIP_CERT_FILE (CA bundle for pip; default: pip's own `cert` setting). Builds use the host
# network (the package registries), a persistent pip cache and, if pip's find-links holds the
# CPU torch wheel, that wheel (linked into .wheels/). Prints each image's size.
set -euo pipefail
cd "$(dirname "$0")/../.."
TAG=${TAG:-latest}
DOCKER=${DOCKER:-docker}
if ! DOCKER_BUILDKIT=1 $DOCKER build --help 2>/dev/null | grep -q -- "--secret"; then
  echo "$DOCKER cannot build with BuildKit (no --secret); set DOCKER to a CLI that can (e.g. /usr/bin/docker)" >&2
  exit 1
fi
args=(--network host)
[ -n "${BASE_IMAGE:-}" ] && args+=(--build-arg "BASE_IMAGE=$BASE_IMAGE")
pip_setting() {  # a pip setting from its environment or config files (pip config list), first found
  { pip config list 2>/dev/null || true; } | sed -n "s/^[^=]*\.$1='\(.*\)'\$/\1/p" | head -1
}
PIP_CERT_FILE=${PIP_CERT_FILE:-$(pip_setting cert)}
[ -n "$PIP_CERT_FILE" ] && [ -f "$PIP_CERT_FILE" ] && args+=(--secret "id=pip_cert,src=$PIP_CERT_FILE")
mkdir -p .wheels
for dir in $(pip_setting find-links); do
  for wheel in "$dir"/torch-2.13.0+cpu-*.whl; do
    [ -f "$wheel" ] && { ln -f "$wheel" .wheels/ 2>/dev/null || cp -f "$wheel" .wheels/; }
  done
done
if ls .wheels/torch-2.13.0+cpu-*.whl >/dev/null 2>&1; then
  args+=(--build-arg "TORCH_INDEX_URL=${TORCH_INDEX_URL:-https://pypi.org/simple}")
elif [ -n "${TORCH_INDEX_URL:-}" ]; then
  args+=(--build-arg "TORCH_INDEX_URL=$TORCH_INDEX_URL")
fi
for target in "$@"; do
  case $target in
    *-cuda|*-vllm|*-sonar) image="promptopt/${target%-*}:$TAG-${target##*-}" ;;
    *) image="promptopt/$target:$TAG" ;;
  esac
  start=$(date +%s)
  DOCKER_BUILDKIT=1 $DOCKER build "${args[@]}" -f deploy/docker/Dockerfile --target "$target" -t "$image" .
  echo "built $image in $(( $(date +%s) - start )) s"
done
# the untagged images our rebuilds leave (on the vfs driver each is a full copy); no one else's
$DOCKER image prune -f --filter label=org.opencontainers.image.vendor=promptopt >/dev/null
$DOCKER image ls --format '{{.Repository}}:{{.Tag}}\t{{.Size}}' | grep '^promptopt/' | sort
