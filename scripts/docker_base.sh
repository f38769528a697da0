#!/usr/bin/env bash
# A base image for the Dockerfile made from Debian's own packages, for machines that reach Debian's
# package mirror but no container registry (python:3.11-slim cannot be pulled there):
#   bash scripts/docker_base.sh [TAG]        (default seg-base:bookworm; needs root, debootstrap, and
#                                             podman or docker)
# then build with  --build-arg BASE=seg-base:bookworm  (README, "Predict (and the Docker image)").
# Debian 12's python3 is 3.11, the Python of the torch wheels the constraints pin.
set -euo pipefail
TAG="${1:-seg-base:bookworm}"
ENGINE="${SEG_ENGINE:-$(command -v podman || command -v docker || true)}"
[ -n "$ENGINE" ] || { echo "docker_base.sh: neither podman nor docker is installed" >&2; exit 1; }
command -v debootstrap >/dev/null || { echo "docker_base.sh: debootstrap is not installed (apt-get install debootstrap)" >&2; exit 1; }
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
root="$(mktemp -d)"
trap 'rm -rf "$root"' EXIT
debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates bookworm "$root" "$MIRROR"
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
tar -C "$root" -c . | "$ENGINE" import --change 'CMD ["/bin/bash"]' - "$TAG"
echo "docker_base.sh: imported $TAG with $ENGINE"
