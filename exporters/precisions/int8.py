"""INT8 as explicit symmetric Q/DQ (gemdeploy.calibration.int8): what TensorRT 10 and 11 build as INT8."""

from __future__ import annotations

import onnx

from gemdeploy.errors import GemdeployError
from gemdeploy.exporters import layout
from gemdeploy.exporters import onnx_export as ox
from gemdeploy.exporters.precisions.base import ExportJob, Precision


class Int8(Precision):
    name = "int8"
    file = layout.onnx_file("int8")

    def export(self, job: ExportJob) -> dict:
        from gemdeploy.calibration.int8 import qdq_report, quantize_int8

        opts = job.opts
        calib = job.data.sample_images(opts.calib_samples, "train").float().cpu()
        path = job.stage / self.file
        record = quantize_int8(job.fp32_path, path, calib, method=opts.calib_method,
                               cache_dir=job.out_dir / layout.CALIB_CACHE)
        q = onnx.load(str(path))
        ox.full_check(q)
        structure = qdq_report(q)
        quantized = [k for k, v in structure["layers"].items() if v["weight_int8"]]
        if not quantized or not structure["symmetric"]:
            path.unlink(missing_ok=True)
            raise GemdeployError("INT8 quantization produced no symmetric Q/DQ weights; model.int8.onnx not written")
        check = ox.verify(path, job.model, job.verify_images, "int8", job.reference)
        if not check["ok"]:
            path.unlink(missing_ok=True)
            raise GemdeployError(f"the INT8 ONNX failed verification, not written: {ox.describe_failure(check)}")
        acc = job.test_accuracy(path)
        drop = None if acc is None or job.fp32_acc is None else round((job.fp32_acc - acc) * 100, 3)
        job.notes.update({"int8_drop_points": drop, "int8_drop_ok": drop is None or drop <= opts.max_int8_drop,
                          "max_int8_drop": opts.max_int8_drop})
        job.log(f"INT8 Q/DQ ONNX: {len(quantized)} layers quantized, calibration "
                f"{'from cache' if record['cache_hit'] else opts.calib_method}")
        return job.sidecar(path, q, precision="int8", calibration=record,
                           qdq={k: v for k, v in structure.items() if k != "layers"},
                           quantized_layers=len(quantized), verification=check, test_acc=acc,
                           fp32_test_acc=job.fp32_acc, drop_points=drop, max_drop_points=opts.max_int8_drop)
