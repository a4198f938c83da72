"""The options of `gemdeploy export`, declared once (default, help, range, choices)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from gemdeploy.calibration import CALIB_METHODS
from gemdeploy.errors import GemdeployError
from gemdeploy.exporters.precisions import PRECISIONS
from gemdeploy.options import at_least, option, validate

EXPORTERS = ("auto", "dynamo", "torchscript")
_TRT = "TensorRT (--trt)"


@dataclass(frozen=True)
class ExportOptions:
    precision: list[str] = option(["fp32"], "Precisions to export (repeatable); fp32 is always exported: it is "
                                  "the reference the others are checked against.", choices=PRECISIONS.names, kind="precision",
                                  short="-p")
    calib_samples: int = option(512, "INT8: training-split images used for calibration.", check=at_least(1))
    calib_method: str = option("entropy", "INT8 calibration method.", choices=lambda: list(CALIB_METHODS),
                               kind="calibration method")
    max_int8_drop: float = option(1.0, "INT8: largest acceptable test-accuracy drop, in points; above it the "
                                  "export warns and exits 3.", check=at_least(0))
    verify_samples: int = option(512, "Test images on which ONNX Runtime is checked against PyTorch.",
                                 check=at_least(1))
    exporter: str = option("auto", "auto (torch.export, falling back to TorchScript), dynamo or torchscript.",
                           choices=lambda: list(EXPORTERS), kind="exporter")
    sparse_cpu_batch: int = option(64, "sparse-cpu: the large batch at which each layer's kernels are timed "
                                   "(they are also timed at batch 1).", check=at_least(2))
    sparse_storage: bool = option(True, "Also write model.sparse.onnx (weights as ONNX sparse initializers).",
                                  off_help="Skip model.sparse.onnx (weights as ONNX sparse initializers).")
    trt: bool = option(False, "Also build a TensorRT engine per precision (needs TensorRT and a CUDA GPU).",
                       panel=_TRT)
    min_batch: int = option(1, "Optimization profile: smallest batch.", check=at_least(1), panel=_TRT)
    opt_batch: int = option(32, "Optimization profile: batch to tune for.", check=at_least(1), panel=_TRT)
    max_batch: int = option(256, "Optimization profile: largest batch.", check=at_least(1), panel=_TRT)
    workspace_mib: int = option(2048, "Builder workspace limit (MiB).", check=at_least(1), panel=_TRT)
    timing_cache: str | None = option(None, "Timing cache reused across builds (default "
                                      "~/.cache/gemdeploy/tensorrt-timing.cache).", panel=_TRT)
    overwrite: bool = option(False, "Replace existing artifacts (without it, only missing precisions are added).")

    def resolve(self) -> "ExportOptions":
        """Validated, with fp32 first and the precisions in registry order."""
        validate(self)
        if not (self.min_batch <= self.opt_batch <= self.max_batch):
            raise GemdeployError(f"need --min-batch <= --opt-batch <= --max-batch "
                                 f"(got {self.min_batch}, {self.opt_batch}, {self.max_batch})")
        wanted = {"fp32", *self.precision}
        return dataclasses.replace(self, precision=[p for p in PRECISIONS.names() if p in wanted])


__all__ = ["ExportOptions", "CALIB_METHODS", "EXPORTERS"]
