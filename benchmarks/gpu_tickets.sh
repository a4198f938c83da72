#!/usr/bin/env bash
# The paper-budget ticket table (benchmarks/gpu_tickets.py) on a GPU machine without registry access, from the
# repository root, with wheels/ from `bash benchmarks/gpu_wheels.sh` carried along:
#
#   bash benchmarks/gpu_tickets.sh OUT [benchmarks/gpu_tickets.py options, e.g. --procs 8 --cuda-graph]
#
# 1. installs the carried wheels and this checkout (built offline with the image's setuptools: every job is a
#    `python -m gemdeploy.cli mine` process, and gemdeploy.cli exists only installed) into a private folder;
# 2. runs the jobs side by side on the GPU for at most --budget seconds (default 420), starting from
#    benchmarks/results/gpu-tickets.json (the runs earlier calls finished), writing OUT/gpu-tickets.json,
#    OUT/BENCHMARKS-gpu-tickets.md and the log OUT/gpu-tickets.log.
# Back here: cp OUT/gpu-tickets.json benchmarks/results/gpu-tickets.json && .venv/bin/python -m benchmarks.gpu_tickets --report-only
set -uo pipefail
out=${1:?usage: bash benchmarks/gpu_tickets.sh OUT [benchmarks/gpu_tickets.py options]}
shift
mkdir -p "$out"
site=${GPU_TICKETS_SITE:-/tmp/gemdeploy-gpu-tickets-site}
python=${PYTHON:-python3}
ls wheels/*.whl >/dev/null 2>&1 || { echo "no wheels/*.whl here: run bash benchmarks/gpu_wheels.sh first and carry wheels" >&2; exit 2; }
rm -rf "$site" build
"$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$site" wheels/*.whl \
    || { echo "installing wheels/ failed" >&2; exit 2; }
"$python" -m pip install -q --no-index --no-deps --no-build-isolation --no-compile --no-cache-dir --upgrade --target "$site" . \
    || { echo "installing this checkout failed" >&2; exit 2; }
# The installed package first (it holds gemdeploy.cli); the checkout after it, for benchmarks/.
export PYTHONPATH="$site:$PWD${PYTHONPATH:+:$PYTHONPATH}" PATH="$site/bin:$PATH" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 | tee "$out/gpu-tickets.log"
state=benchmarks/results/gpu-tickets.json
"$python" -m benchmarks.gpu_tickets --out "$out/gpu-tickets.json" --markdown "$out/BENCHMARKS-gpu-tickets.md" \
    $([ -f "$state" ] && echo --state "$state") --no-write-benchmarks "$@" 2>&1 | tee -a "$out/gpu-tickets.log"
exit "${PIPESTATUS[0]}"
