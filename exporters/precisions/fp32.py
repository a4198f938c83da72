"""fp32 ONNX: the reference every other precision is checked against; also where the 2:4 layout is verified."""

from __future__ import annotations

from gemdeploy.errors import GemdeployError
from gemdeploy.exporters import layout
from gemdeploy.exporters import onnx_export as ox
from gemdeploy.exporters.precisions.base import ExportJob, Precision
from gemdeploy.exporters.sparsity import onnx_24_report
from gemdeploy.sparsity import PATTERNS


class Fp32(Precision):
    name = "fp32"
    file = layout.onnx_file("fp32")

    def export(self, job: ExportJob) -> dict:
        proto, exporter = ox.torch_to_onnx(job.model, job.verify_images, exporter=job.opts.exporter)
        ox.full_check(proto)
        proto, simplified = ox.simplify(proto)
        path = job.stage / self.file
        check = ox.write_verified(proto, path, lambda p: ox.verify(p, job.model, job.verify_images, "fp32",
                                                                   job.reference), "the fp32 ONNX")
        report24 = onnx_24_report(proto)
        sparsity_24 = {"eligible": len(report24), "sparse": sum(report24.values()), "tensors": report24}
        lost = PATTERNS.get(job.art.config.pattern).export_error(report24)
        if lost:
            raise GemdeployError(lost)
        job.fp32_path, job.fp32_proto, job.exporter = path, proto, exporter
        job.fp32_acc = job.test_accuracy(path)
        job.log(f"fp32 ONNX verified: max |diff| {check['max_abs_diff']:.2g} (tolerance {check['tolerance']:.2g})")
        return job.sidecar(path, proto, precision="fp32", exporter=exporter, simplified=simplified,
                           verification=check, test_acc=job.fp32_acc,
                           sparsity_24={**sparsity_24, "tensors": None}, sparsity_24_tensors=report24)
