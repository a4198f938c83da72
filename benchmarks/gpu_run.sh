#!/usr/bin/env bash
# The whole GPU benchmark on a machine without registry access (the workplace's GPU machine), from the repository
# root, with wheels/ from `bash benchmarks/gpu_wheels.sh` carried along:
#
#   bash benchmarks/gpu_run.sh OUT [more benchmarks/gpu.py options]
#   GPU_BENCH=gpu_inference bash benchmarks/gpu_run.sh OUT     # benchmarks/gpu_inference.py instead (issue 26)
#
# 1. installs the carried wheels (no index, no dependencies: the image has the rest) into a private folder;
# 2. runs gemdeploy from this source tree (PYTHONPATH; nothing is built there: `pip install -e .` would need
#    setuptools to build offline and buys the benchmark nothing);
# 3. runs benchmarks/gpu.py, which writes OUT/gpu.json and OUT/BENCHMARKS-gpu.md after every figure, with its
#    log in OUT/gpu.log. It keeps to its --budget (default 450 s) and stops itself 90 s past it at the latest.
# Back here: `.venv/bin/python -m benchmarks.gpu --from-json OUT/gpu.json` writes the GPU section of BENCHMARKS.md.
set -uo pipefail
out=${1:?usage: bash benchmarks/gpu_run.sh OUT [benchmarks/gpu.py options]}
shift
mkdir -p "$out"
site=${GPU_BENCH_SITE:-/tmp/gemdeploy-site}
python=${PYTHON:-python3}
ls wheels/*.whl >/dev/null 2>&1 || { echo "no wheels/*.whl here: run bash benchmarks/gpu_wheels.sh first and carry wheels" >&2; exit 2; }
"$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" wheels/*.whl \
    || { echo "installing wheels/ failed" >&2; exit 2; }
export PYTHONPATH="$PWD:$site${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
bench=${GPU_BENCH:-gpu}
extra=()
[ "$bench" = gpu ] && extra=(--work /tmp/gemdeploy-gpu)
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 | tee "$out/$bench.log"
"$python" -m "benchmarks.$bench" --out "$out/$bench.json" --markdown "$out/BENCHMARKS-$bench.md" \
    ${extra[@]+"${extra[@]}"} "$@" 2>&1 | tee -a "$out/$bench.log"
exit "${PIPESTATUS[0]}"
