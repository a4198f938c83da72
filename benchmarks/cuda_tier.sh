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
site=${CUDA_TIER_SITE:-/tmp/gemdeploy-cuda-tier}
python=${PYTHON:-python3}
ls wheels/*.whl >/dev/null 2>&1 || { echo "no wheels/*.whl here: run bash benchmarks/gpu_wheels.sh first and carry wheels" >&2; exit 2; }
rm -rf "$site" build
"$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$site" wheels/*.whl \
    || { echo "installing wheels/ failed" >&2; exit 2; }
"$python" -m pip install -q --no-index --no-deps --no-build-isolation --no-compile --no-cache-dir --upgrade --target "$site" . \
    || { echo "installing this checkout failed" >&2; exit 2; }
# The installed package first (it holds gemdeploy.cli); the checkout after it, for benchmarks/ and tests/.
export PYTHONPATH="$site:$PWD${PYTHONPATH:+:$PYTHONPATH}" PATH="$site/bin:$PATH" PYTHONUNBUFFERED=1
"$python" -m benchmarks.cuda_tier --record "$out/cuda-tier.md" "$@"
