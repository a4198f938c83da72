# gemdeploy on NVIDIA's TensorRT container: TensorRT's Python API, CUDA and cuDNN come from the base image.
#   docker build -t gemdeploy .
#   docker run --gpus all --rm -v "$PWD/runs:/work/runs" gemdeploy doctor
#   docker run --gpus all --rm -v "$PWD/runs:/work/runs" gemdeploy export runs/r20-gm --trt --precision int8
# Pinned tag (TensorRT 10.x, CUDA 13.0, Ubuntu 24.04, Python 3.12): bump it deliberately, then rerun the
# TensorRT tests (tests/test_export.py::test_tensorrt_engine_build_with_sparse_weights) inside the image.
FROM nvcr.io/nvidia/tensorrt:25.10-py3

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH

# A virtual environment that still sees the container's own TensorRT Python bindings
# (--system-site-packages), so `tensorrt>=10` from the gpu extra is already satisfied by the base image.
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3-venv \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv --system-site-packages "$VIRTUAL_ENV" \
    && pip install --upgrade pip setuptools wheel

WORKDIR /opt/gemdeploy

# Dependency layer: rebuilt only when pyproject.toml changes, not on every source edit.
# The gpu extra brings onnxruntime-gpu (never together with the cpu extra's onnxruntime).
COPY pyproject.toml ./
RUN python3 -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; \
print('\n'.join(p['dependencies'] + p['optional-dependencies']['gpu']))" > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt

# The source, then gemdeploy itself (dependencies are already in place).
COPY README.md ./
COPY gemdeploy ./gemdeploy
COPY cli ./cli
COPY exporters ./exporters
COPY calibration ./calibration
RUN pip install --no-deps ".[gpu]" \
    && python3 -c "import onnxruntime, tensorrt; print('onnxruntime', onnxruntime.__version__, 'tensorrt', tensorrt.__version__)"

# Run as an unprivileged user; run directories go under /work (mount a volume there).
RUN useradd --create-home --uid 10001 --shell /usr/sbin/nologin gemdeploy \
    && mkdir -p /work && chown gemdeploy:gemdeploy /work
USER gemdeploy
WORKDIR /work

ENTRYPOINT ["gemdeploy"]
CMD ["doctor"]
