#!/bin/sh
# Push a multi-platform Python base image (linux/amd64 + linux/arm64), shaped like the public
# python images, to a local registry as <REGISTRY>/library/python:3.11-bookworm: an OCI index
# over two manifests, each config with ENV PYTHON_VERSION.
#
#   usage: scripts/build-multiarch-base.sh REGISTRY_HOST:PORT [CACHE_DIR]
#
# amd64 is the layer of the local engine's mlbuild-test/python:3.11-bookworm (built by
# scripts/build-base-image.sh when missing). arm64 is made without running any arm64 code:
# `debootstrap --foreign` only downloads (and unpacks the essential) packages, and every
# downloaded .deb is then unpacked into the rootfs. Maintainer scripts never run, so the
# rootfs is for reading (build tests), not for starting containers on arm64.
#
# The result is cached as an OCI layout in CACHE_DIR (default ~/.cache/mlbuild-test/
# multiarch-python-3.11-bookworm); later runs only push it. Delete that directory to rebuild.
set -eu
[ $# -ge 1 ] || { echo "usage: $0 REGISTRY_HOST:PORT [CACHE_DIR]" >&2; exit 2; }
REGISTRY=$1
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(dirname "$HERE")
CACHE=${2:-${XDG_CACHE_HOME:-$HOME/.cache}/mlbuild-test/multiarch-python-3.11-bookworm}
AMD64_IMAGE=mlbuild-test/python:3.11-bookworm
TAG=3.11-bookworm
PY=${PYTHON:-}
if [ -z "$PY" ]; then
  if [ -x "$ROOT/.venv/bin/python" ]; then PY="$ROOT/.venv/bin/python"; else PY=python3; fi
fi
now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

if [ ! -f "$CACHE/index.json" ]; then
  t0=$(now)
  WORK=$(mktemp -d /tmp/mlbuild-multiarch.XXXXXX)
  trap 'rm -rf "$WORK"' EXIT

  # --- linux/amd64: the local engine's base image layer(s) ---------------------------------
  docker image inspect "$AMD64_IMAGE" >/dev/null 2>&1 || "$HERE/build-base-image.sh" "$AMD64_IMAGE"
  mkdir -p "$WORK/amd64"
  docker save "$AMD64_IMAGE" | tar -x -C "$WORK/amd64"
  AMD64_PY=$(docker image inspect "$AMD64_IMAGE" --format '{{range .Config.Env}}{{println .}}{{end}}' \
    | sed -n 's/^PYTHON_VERSION=//p')

  # --- linux/arm64: downloaded .debs unpacked into a rootfs --------------------------------
  MIRROR=$("$HERE/debian-mirror.sh")
  RFS="$WORK/arm64-rootfs"
  if ! debootstrap --foreign --arch=arm64 --variant=minbase \
      --include=python3,python3-venv,ca-certificates bookworm "$RFS" "$MIRROR" >"$WORK/debootstrap.log" 2>&1; then
    echo "debootstrap --foreign --arch=arm64 failed; its log:" >&2
    tail -20 "$WORK/debootstrap.log" >&2
    exit 1
  fi
  # tar --keep-directory-symlink: bookworm is merged-/usr (/bin -> usr/bin); a package's ./bin/
  # entry must go through that link, not replace it with a directory.
  for deb in "$RFS"/var/cache/apt/archives/*.deb; do
    dpkg-deb --fsys-tarfile "$deb" | tar --keep-directory-symlink -x -C "$RFS"
  done
  # What the packages' maintainer scripts would have done, for the parts a build reads.
  [ -s "$RFS/etc/passwd" ] || cp "$RFS/usr/share/base-passwd/passwd.master" "$RFS/etc/passwd"
  [ -s "$RFS/etc/group" ] || cp "$RFS/usr/share/base-passwd/group.master" "$RFS/etc/group"
  ARM64_PY=$(ls "$RFS"/var/cache/apt/archives/python3.11-minimal_*_arm64.deb | sed -n 's/.*python3.11-minimal_\([0-9.]*\)[-+~].*/\1/p')
  # Like scripts/build-base-image.sh: no debootstrap state, apt caches, docs, man pages.
  rm -rf "$RFS/debootstrap" "$RFS"/var/cache/apt/* "$RFS"/var/lib/apt/lists/* \
    "$RFS"/usr/share/doc/* "$RFS"/usr/share/man/* "$RFS"/usr/share/locale/*
  [ -x "$RFS/usr/bin/python3.11" ] || { echo "arm64 rootfs has no /usr/bin/python3.11" >&2; exit 1; }
  tar --sort=name --numeric-owner --owner=0 --group=0 --mtime=@0 -C "$RFS" -cf "$WORK/arm64.tar" .

  if [ "$AMD64_PY" != "$ARM64_PY" ]; then
    echo "Python versions differ: amd64 image has $AMD64_PY, arm64 packages have $ARM64_PY" >&2
    exit 1
  fi
  "$PY" "$HERE/_multiarch_base.py" build --out "$CACHE" --tag "$TAG" --python-version "$AMD64_PY" \
    --docker-save "linux/amd64=$WORK/amd64" --rootfs-tar "linux/arm64/v8=$WORK/arm64.tar"
  echo "built multi-arch base layout $CACHE in $(elapsed "$t0") s"
fi

t0=$(now)
"$PY" "$HERE/_multiarch_base.py" push --layout "$CACHE" --tag "$TAG" --registry "$REGISTRY" --repository library/python
echo "pushed $REGISTRY/library/python:$TAG in $(elapsed "$t0") s"
