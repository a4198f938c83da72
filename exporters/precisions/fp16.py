"""fp16 ONNX: fp16 weights and activations inside the graph, fp32 I/O with one Cast at each end (TensorRT's
strongly typed mode builds it as FP16)."""

from __future__ import annotations

from gemdeploy.exporters import layout
from gemdeploy.exporters import onnx_export as ox
from gemdeploy.exporters.precisions.base import ExportJob, Precision


class Fp16(Precision):
    name = "fp16"
    file = layout.onnx_file("fp16")

    def export(self, job: ExportJob) -> dict:
        half = ox.to_fp16(job.fp32_proto)
        ox.full_check(half)
        path = job.stage / self.file
        check = ox.write_verified(half, path, lambda p: ox.verify(p, job.model, job.verify_images, "fp16",
                                                                  job.reference), "the fp16 ONNX")
        acc = job.test_accuracy(path)
        job.log(f"fp16 ONNX verified: top-1 agreement {check['top1_agreement']:.2%}")
        return job.sidecar(path, half, precision="fp16", exporter=job.exporter, verification=check, test_acc=acc)
