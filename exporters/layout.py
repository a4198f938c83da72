"""Every name inside RUN/export/, in one place.

    model.<precision>.onnx + model.<precision>.json   verified ONNX and its sidecar (source sha256, checks, accuracy)
    model.sparse.onnx + model.sparse.json             fp32 with sparse (COO) weight storage (ONNX Runtime)
    model.sparse-cpu.safetensors + .json              CSR weights + op graph for gemdeploy.sparse_cpu (--precision sparse-cpu)
    engine.<precision>.plan + engine.<precision>.json  TensorRT engines (--trt)
    calib-cache/<sha>-<method>-<samples>.json          INT8 activation ranges (reused)
    export.json                                        the record: source, accuracies, sizes, files
    .staging-*/                                        a run in progress (swept by the next export)
"""

from gemdeploy.run.layout import EXPORT_DIR  # noqa: F401 - the folder's name inside the run directory

RECORD = "export.json"
SPARSE_STORAGE = "model.sparse.onnx"
SPARSE_CPU = "model.sparse-cpu.safetensors"
CALIB_CACHE = "calib-cache"
STAGING_PREFIX = ".staging-"


def onnx_file(precision: str) -> str:
    return f"model.{precision}.onnx"


def engine_file(precision: str) -> str:
    return f"engine.{precision}.plan"


def sidecar(name: str) -> str:
    """The JSON next to an artifact: model.fp32.onnx -> model.fp32.json."""
    return name.rsplit(".", 1)[0] + ".json"
