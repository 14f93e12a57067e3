#!/usr/bin/env bash
# A Python 3.11 Debian bookworm base image made without a registry (as root): debootstrap from
# Debian's mirror, then `docker import`. Use it with `make images BASE_IMAGE=NAME` where
# python:3.11-slim-bookworm cannot be pulled. Usage: deploy/docker/base-image.sh [NAME]
set -euo pipefail
NAME=${1:-promptopt/python-base:3.11-bookworm}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
DOCKER=${DOCKER:-docker}
if $DOCKER image inspect "$NAME" >/dev/null 2>&1; then
  echo "base image $NAME already exists"
  exit 0
fi
root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
chmod 755 "$root"  # the image's / (mktemp makes it 0700: unusable for the non-root user)
debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates,passwd bookworm "$root" "$MIRROR"
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
tar -C "$root" -c . | $DOCKER import --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'CMD ["python3"]' - "$NAME"
echo "base image $NAME: $($DOCKER image inspect --format '{{.Size}}' "$NAME") bytes"
