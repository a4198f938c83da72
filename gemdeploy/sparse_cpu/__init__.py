"""A sparse CPU runtime for unstructured tickets: CSR (or dense, where that measured faster) products per layer,
BatchNorm folded, numpy + scipy only.

    from gemdeploy.sparse_cpu import load
    model = load("RUN/export/model.sparse-cpu.safetensors", threads=2)
    logits = model(images)  # numpy float32 (B, C, H, W) -> (B, classes)

Importing this package imports neither torch nor ONNX Runtime (a deployment target may have neither); the
artifact is written by `gemdeploy export --precision sparse-cpu` (gemdeploy.sparse_cpu.build, which needs torch).
"""

from gemdeploy.sparse_cpu.runtime import ENGINES, FILE_FORMAT, SparseModel, load

__all__ = ["ENGINES", "FILE_FORMAT", "SparseModel", "load"]
