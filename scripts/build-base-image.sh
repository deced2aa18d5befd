#!/bin/sh
# Build a Debian bookworm + Python 3.11 base image from Debian's packages and import it into
# the local Docker engine. Machines with no container registry (CI, the dev sandbox) use it as
# `--base` in place of the public python:3.11-slim. Cached: an existing image is kept.
#   usage: scripts/build-base-image.sh [IMAGE]   (default mlbuild-test/python:3.11-bookworm)
set -eu
IMAGE=${1:-mlbuild-test/python:3.11-bookworm}
if docker image inspect "$IMAGE" >/dev/null 2>&1; then
  echo "base image $IMAGE already present"; exit 0
fi
MIRROR=$("$(dirname "$0")/debian-mirror.sh")
ROOT=$(mktemp -d /tmp/mlbuild-rootfs.XXXXXX)
trap 'rm -rf "$ROOT"' EXIT
debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates bookworm "$ROOT" "$MIRROR" >/tmp/mlbuild-debootstrap.log 2>&1 \
  || { echo "debootstrap failed; see /tmp/mlbuild-debootstrap.log" >&2; tail -20 /tmp/mlbuild-debootstrap.log >&2; exit 1; }
# Smaller image: no apt lists, caches, docs or man pages are needed at run time.
rm -rf "$ROOT"/var/cache/apt/* "$ROOT"/var/lib/apt/lists/* "$ROOT"/usr/share/doc/* "$ROOT"/usr/share/man/* "$ROOT"/usr/share/locale/*
PYVER=$(chroot "$ROOT" python3 -c 'import platform; print(platform.python_version())')
tar --numeric-owner -C "$ROOT" -c . | docker import \
  --change "ENV PYTHON_VERSION=$PYVER" \
  --change 'ENV LANG=C.UTF-8' \
  --change 'CMD ["python3"]' - "$IMAGE" >/dev/null
echo "built base image $IMAGE (Python $PYVER)"
