#!/usr/bin/env bash
# The CUDA test tier on a GPU server without registry access (the workplace's GPU machine), from the repository
# root, with wheels/ from `bash benchmarks/gpu_wheels.sh` carried along:
#
#   bash benchmarks/cuda_tier.sh OUT [benchmarks/cuda_tier.py options]
#
# 1. installs the carried wheels and this checkout (built offline with the image's setuptools: the tests run the
#    installed `gemdeploy` command and its gemdeploy.cli package) into a private folder, not the image's Python;
# 2. runs every test marked `cuda` (python -m benchmarks.cuda_tier), writing OUT/cuda-tier.md and OUT/cuda-tier.json.
# Back here: copy OUT/cuda-tier.md to docs/cuda-tier.md and commit it.
set -uo pipefail
out=${1:?usage: bash benchmarks/cuda_tier.sh OUT [benchmarks/cuda_tier.py options]}
shift
mkdir -p "$out"
python=${PYTHON:-python3}
source benchmarks/gpu_install.sh && install_checkout "${CUDA_TIER_SITE:-/tmp/gemdeploy-cuda-tier}" || exit 2
"$python" -m benchmarks.cuda_tier --record "$out/cuda-tier.md" "$@"
