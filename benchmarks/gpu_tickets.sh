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
python=${PYTHON:-python3}
source benchmarks/gpu_install.sh && install_checkout "${GPU_TICKETS_SITE:-/tmp/gemdeploy-gpu-tickets-site}" || exit 2
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 | tee "$out/gpu-tickets.log"
state=benchmarks/results/gpu-tickets.json
"$python" -m benchmarks.gpu_tickets --out "$out/gpu-tickets.json" --markdown "$out/BENCHMARKS-gpu-tickets.md" \
    $([ -f "$state" ] && echo --state "$state") --no-write-benchmarks "$@" 2>&1 | tee -a "$out/gpu-tickets.log"
exit "${PIPESTATUS[0]}"
