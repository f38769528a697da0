#!/usr/bin/env bash
# Build the image and run it on synthetic data, for machines with a Docker engine (none runs on the
# project's CI machines; there tests/inference/test_docker_entrypoint.py runs the entrypoint instead).
# Usage: bash scripts/docker_smoke.sh MODEL_DIR    (a seg model bundle, e.g. outputs/<experiment>/kfold/<run>/model)
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL="${1:?usage: docker_smoke.sh MODEL_DIR}"
work="$(mktemp -d)"
bash scripts/setup_env.sh
.venv/bin/seg-synth -o "$work/ds" -n 2 --seed 7
mkdir -p "$work/input" "$work/output"
cp "$work"/ds/imagesTr/*.nii.gz "$work/input/"
chmod 777 "$work/output"
docker build -t seg:smoke .
docker run --rm --user 1000:1000 --shm-size 2g \
  -v "$work/input":/input:ro -v "$work/output":/output -v "$(cd "$MODEL" && pwd)":/model:ro seg:smoke
ls -l "$work/output"
test -f "$work/output/summary.csv"
echo "docker smoke test passed: $work/output"
