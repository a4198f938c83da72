"""INT8 as explicit Q/DQ ONNX (gemdeploy.calibration.int8), two files:

* ``int8`` (this module): symmetric activations and full-range symmetric per-channel weights, what TensorRT 10
  and 11 build as INT8;
* ``int8-cpu`` (int8_cpu.py): the same with 7-bit weights, for ONNX Runtime on CPUs, where x86 kernels without
  VNNI saturate with full-range weights.

Each file's test accuracy is measured twice: with ONNX Runtime's graph optimizations off, the Q/DQ model's own
numerics (DequantizeLinear then the float op: what TensorRT executes), and with them on, what ONNX Runtime on this
CPU gives (fused INT8 kernels whose arithmetic depends on the CPU). The file gets one verdict from both, written
in its sidecar and copied into export.json; when the two disagree the verdict says why and what fixes it.
"""

from __future__ import annotations

import onnx

from gemdeploy.calibration.int8 import qdq_report, quantize_int8
from gemdeploy.calibration.x86_emulation import INT16_MAX, max_abs_weight, pair_bound
from gemdeploy.errors import GemdeployError
from gemdeploy.exporters import layout
from gemdeploy.exporters import onnx_export as ox
from gemdeploy.exporters.precisions.base import ExportJob, Precision
from gemdeploy.machine import describe_int8_cpu, int8_cpu

CALIBRATION_ADVICE = "try --calib-method percentile or minmax, or more --calib-samples"
CPU_FIX = ("for ONNX Runtime on CPU export --precision int8-cpu (7-bit weights: ONNX Runtime's INT8 kernels cannot "
           "saturate on it)")


def _drop(fp32: float | None, acc: float | None) -> float | None:
    return None if fp32 is None or acc is None else round((fp32 - acc) * 100, 3)


def int8_verdict(precision: str, fp32_acc: float | None, qdq_acc: float | None, cpu_acc: float | None,
                 max_drop: float, cpu: dict) -> dict:
    """The one verdict on an INT8 file: ok when both its Q/DQ numerics and ONNX Runtime on this CPU stay within
    ``max_drop`` points of fp32; otherwise the cause ('quantization': the numerics themselves lose accuracy;
    'cpu-kernels': only ONNX Runtime's fused kernels on this CPU do), a message and the fix."""
    file = layout.onnx_file(precision)
    qdq_drop, cpu_drop = _drop(fp32_acc, qdq_acc), _drop(fp32_acc, cpu_acc)
    out = {"ok": True, "cause": None, "drop_points": cpu_drop, "qdq_drop_points": qdq_drop,
           "max_drop_points": max_drop, "message": None, "advice": None}
    if qdq_drop is None or cpu_drop is None:
        out["message"] = f"{file}: no test accuracy to judge (synthetic data); outputs checked only"
        return out
    if qdq_drop > max_drop:
        out.update(ok=False, cause="quantization", advice=CALIBRATION_ADVICE,
                   message=f"{file}: its Q/DQ numerics lose {qdq_drop:.2f} points (fp32 {fp32_acc:.2%} -> "
                           f"{qdq_acc:.2%}), more than --max-int8-drop {max_drop:g}: the loss is in the quantized "
                           f"model itself (calibration ranges or 8-bit steps)")
    elif cpu_drop > max_drop:
        kernels = cpu.get("description", "this CPU")
        if cpu.get("pair_sums_saturate"):
            why = (f"ONNX Runtime's fused INT8 kernels saturate on x86 CPUs without VNNI (this one: {kernels}): "
                   "they add pairs of u8 x s8 products in int16, and full-range weights overflow it")
        else:
            why = f"ONNX Runtime's fused INT8 kernels on this CPU ({kernels}) compute differently from the Q/DQ graph"
        fix = (CPU_FIX + f"; {file} stays right for TensorRT") if precision == "int8" else \
            "run it with ONNX Runtime's graph optimizations off, or ship fp32 for this CPU"
        out.update(ok=False, cause="cpu-kernels", advice=fix,
                   message=f"{file}: its Q/DQ numerics score {qdq_acc:.2%} (fp32 {fp32_acc:.2%}, what TensorRT "
                           f"runs) but ONNX Runtime on this CPU scores {cpu_acc:.2%} ({cpu_drop:.2f} points lost "
                           f"> --max-int8-drop {max_drop:g}): {why}")
    else:
        out["message"] = (f"{file}: within {max_drop:g} pt of fp32 {fp32_acc:.2%} both as Q/DQ numerics "
                          f"({qdq_acc:.2%}) and on ONNX Runtime CPU here ({cpu_acc:.2%})")
    return out


def verdict_of(side: dict, max_drop: float) -> dict:
    """An INT8 sidecar's verdict under ``max_drop`` (re-derived from its stored accuracies when the limit changed;
    a sidecar written before verdicts existed is judged on its ONNX Runtime CPU drop alone)."""
    verdict = side.get("verdict")
    if isinstance(verdict, dict) and verdict.get("max_drop_points") == max_drop:
        return verdict
    precision = side.get("precision", "int8")
    cpu = ((side.get("verification") or {}).get("onnxruntime_cpu") or {}).get("cpu") or {}
    if "qdq_test_acc" not in side:  # written before the numerics were measured: judged on ONNX Runtime CPU only
        out = int8_verdict(precision, side.get("fp32_test_acc"), side.get("test_acc"), side.get("test_acc"),
                           max_drop, cpu)
        return {**out, "qdq_drop_points": None, "message": f"{out['message']} (Q/DQ numerics not measured: "
                                                          "re-export to measure them)"}
    return int8_verdict(precision, side.get("fp32_test_acc"), side["qdq_test_acc"], side.get("test_acc"), max_drop,
                        cpu)


class Int8(Precision):
    name = "int8"
    file = layout.onnx_file("int8")
    scheme = "tensorrt"  # gemdeploy.calibration.int8.SCHEMES
    target = "TensorRT (explicit quantization); also runs on ONNX Runtime"

    def export(self, job: ExportJob) -> dict:
        opts = job.opts
        calib = job.data.sample_images(opts.calib_samples, "train").float().cpu()
        path = job.stage / self.file
        record = quantize_int8(job.fp32_path, path, calib, method=opts.calib_method,
                               cache_dir=job.out_dir / layout.CALIB_CACHE, scheme=self.scheme)
        q = onnx.load(str(path))
        ox.full_check(q)
        structure = qdq_report(q)
        quantized = [k for k, v in structure["layers"].items() if v["weight_int8"]]
        if not quantized or not structure["symmetric"]:
            path.unlink(missing_ok=True)
            raise GemdeployError(f"INT8 quantization produced no symmetric Q/DQ weights; {self.file} not written")
        w_max = max_abs_weight(q) or 0
        bound = pair_bound(w_max)
        if self.scheme == "cpu" and bound > INT16_MAX:
            path.unlink(missing_ok=True)
            raise GemdeployError(f"{self.file}: weights reach |{w_max}|, so ONNX Runtime's x86 kernels without VNNI "
                                 f"could saturate (pair sums up to {bound:,} > {INT16_MAX:,}); not written")
        numerics = ox.verify(path, job.model, job.verify_images, "int8", job.reference, optimize=False)
        on_cpu = ox.verify(path, job.model, job.verify_images, "int8", job.reference)
        for what, check in (("its Q/DQ numerics", numerics), ("ONNX Runtime CPU", on_cpu)):
            if not check["ok"]:
                path.unlink(missing_ok=True)
                raise GemdeployError(f"{self.file} failed verification ({what}), not written: "
                                     f"{ox.describe_failure(check)}")
        qdq_acc = job.test_accuracy(path, optimize=False)
        cpu_acc = job.test_accuracy(path)
        cpu = {**int8_cpu(), "description": describe_int8_cpu()}
        verdict = int8_verdict(self.name, job.fp32_acc, qdq_acc, cpu_acc, opts.max_int8_drop, cpu)
        if self.name == "int8":  # the record's historical INT8 fields
            job.notes.update({"int8_drop_points": verdict["drop_points"], "int8_drop_ok": verdict["ok"],
                              "max_int8_drop": opts.max_int8_drop})
        job.log(f"{self.file}: {len(quantized)} layers quantized ({record['weights']}), calibration "
                f"{'from cache' if record['cache_hit'] else opts.calib_method}; test acc Q/DQ numerics "
                f"{'n/a' if qdq_acc is None else f'{qdq_acc:.2%}'}, ONNX Runtime CPU "
                f"{'n/a' if cpu_acc is None else f'{cpu_acc:.2%}'}")
        portability = {
            "weights_max_abs": w_max, "pair_sum_bound": bound, "int16_max": INT16_MAX,
            "saturation_free_on_x86": bound <= INT16_MAX,
            "note": (f"|w| <= {w_max}: u8 x s8 pair sums stay <= {bound:,}, so ONNX Runtime's x86 kernels without "
                     "VNNI compute the Q/DQ numerics exactly" if bound <= INT16_MAX else
                     f"|w| up to {w_max}: on x86 CPUs without VNNI ONNX Runtime's u8 x s8 pair sums reach {bound:,} "
                     f"> {INT16_MAX:,} and may saturate; int8-cpu avoids it"),
        }
        return job.sidecar(path, q, precision=self.name, target=self.target, calibration=record,
                           qdq={k: v for k, v in structure.items() if k != "layers"},
                           quantized_layers=len(quantized), cpu_portability=portability,
                           verification={"ok": verdict["ok"],
                                         "qdq_numerics": {**numerics, "test_acc": qdq_acc,
                                                          "how": "ONNX Runtime, graph optimizations off"},
                                         "onnxruntime_cpu": {**on_cpu, "test_acc": cpu_acc, "cpu": cpu,
                                                             "how": "ONNX Runtime CPU, graph optimizations on"}},
                           test_acc=cpu_acc, qdq_test_acc=qdq_acc, fp32_test_acc=job.fp32_acc,
                           drop_points=verdict["drop_points"], qdq_drop_points=verdict["qdq_drop_points"],
                           max_drop_points=opts.max_int8_drop, verdict=verdict)
