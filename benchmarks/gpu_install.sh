# Sourced by the GPU-machine scripts (cuda_tier.sh, gpu_tickets.sh): install the carried wheels/ and this checkout
# (built offline with the image's setuptools: gemdeploy.cli exists only installed) into a private folder, not the
# image's Python, and put it first on PYTHONPATH (the checkout after it, for benchmarks/ and tests/).
#
#   source benchmarks/gpu_install.sh && install_checkout SITE || exit 2
install_checkout() {
    local site=$1 python=${PYTHON:-python3}
    ls wheels/*.whl >/dev/null 2>&1 || { echo "no wheels/*.whl here: run bash benchmarks/gpu_wheels.sh first and carry wheels" >&2; return 2; }
    rm -rf "$site" build
    "$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$site" wheels/*.whl \
        || { echo "installing wheels/ failed" >&2; return 2; }
    "$python" -m pip install -q --no-index --no-deps --no-build-isolation --no-compile --no-cache-dir --upgrade \
        --target "$site" . || { echo "installing this checkout failed" >&2; return 2; }
    export PYTHONPATH="$site:$PWD${PYTHONPATH:+:$PYTHONPATH}" PATH="$site/bin:$PATH" PYTHONUNBUFFERED=1
}
