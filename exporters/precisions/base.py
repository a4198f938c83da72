"""What a precision gets to work with, and what it must return."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import onnx
import torch

from gemdeploy.exporters import onnx_export as ox
from gemdeploy.exporters.config import ExportOptions
from gemdeploy.files import file_sha256


@dataclass
class ExportJob:
    """One export of one run: the model, the test data it is checked on, and where files are staged."""

    art: object  # RunArtifacts
    model: torch.nn.Module  # what is exported (compacted, else the fine-tuned masked model), eval mode
    source: str  # "compacted" | "finetuned"
    source_sha256: str  # of the weights file the model came from: an unchanged source keeps its artifacts
    opts: ExportOptions
    stage: Path  # files are written here, verified, then moved into RUN/export/
    out_dir: Path
    data: object  # DataBundle on the CPU
    verify_images: torch.Tensor
    reference: np.ndarray  # PyTorch fp32 logits on verify_images
    log: Callable[[str], None]
    fp32_path: Path | None = None  # the verified fp32 file (staged or already in place)
    fp32_proto: onnx.ModelProto | None = None
    fp32_acc: float | None = None
    exporter: str | None = None
    notes: dict = field(default_factory=dict)  # record fields a precision adds (sparsity_24, int8 verdict, ...)

    def test_accuracy(self, path: Path, *, optimize: bool = True) -> float | None:
        """Test accuracy of an ONNX file through ONNX Runtime on this machine's CPU (None on synthetic data);
        ``optimize=False``: with graph optimizations off (a Q/DQ model's own numerics)."""
        if not getattr(self.data, "real", True):
            return None
        session = ox.ort_session(path, optimize=optimize)
        correct = total = 0
        for x, y in self.data.test.batches(256):
            pred = ox.ort_run(session, x).argmax(1)
            correct += int((pred == y.cpu().numpy()).sum())
            total += len(y)
        return correct / max(1, total)

    def sidecar(self, path: Path, proto: onnx.ModelProto, **extra) -> dict:
        dims = proto.graph.input[0].type.tensor_type.shape.dim[1:]
        return {"file": path.name, "bytes": path.stat().st_size, "sha256": file_sha256(path),
                "source": self.source, "source_sha256": self.source_sha256,
                "input": {"name": ox.INPUT_NAME, "shape": ["batch", *[d.dim_value for d in dims]]},
                "output": ox.OUTPUT_NAME, "graph": ox.graph_summary(proto), **extra}


class Precision:
    name = ""
    file = ""  # artifact name in RUN/export/
    engine = True  # `--trt` builds a TensorRT engine from it (False: a file for a CPU runtime)
    runtime = "onnx"  # what runs the file: "onnx" (ONNX Runtime, TensorRT's parser) or "sparse-cpu"

    def export(self, job: ExportJob) -> dict:
        """Write ``job.stage / self.file``, verify it, return its sidecar (with ``test_acc``)."""
        raise NotImplementedError
