"""INT8 as an explicit Q/DQ ONNX: what TensorRT 10 and 11 build (strongly typed) and ONNX Runtime runs on CPU.

ONNX Runtime's static quantization in QDQ format, with symmetric INT8 activations (zero point 0, the
only kind TensorRT accepts) and symmetric per-channel INT8 weights: full range for the TensorRT file
(``scheme="tensorrt"``, model.int8.onnx), 7-bit for ONNX Runtime on CPUs (``scheme="cpu"``,
model.int8-cpu.onnx; see SCHEMES). Activation ranges come from ``--calib-samples`` training images with
the chosen method (entropy, percentile or minmax) and are cached as JSON keyed by (sha256 of the fp32
ONNX, method, samples[, scheme]): a second export of the same model reuses the ranges instead of
recalibrating.
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import numpy_helper

from gemdeploy.calibration import CALIB_METHODS
from gemdeploy.errors import GemdeployError, unknown_choice
from gemdeploy.progress import quiet



def _ort_method(name: str):
    from onnxruntime.quantization import CalibrationMethod

    if name not in CALIB_METHODS:
        raise unknown_choice("calibration method", name, CALIB_METHODS)
    return {"entropy": CalibrationMethod.Entropy, "percentile": CalibrationMethod.Percentile,
            "minmax": CalibrationMethod.MinMax}[name]


def _reader(images: np.ndarray, batch_size: int, input_name: str):
    from onnxruntime.quantization import CalibrationDataReader

    class ImageReader(CalibrationDataReader):
        def __init__(self):
            self.start = 0

        def get_next(self):
            if self.start >= len(images):
                return None
            batch = images[self.start:self.start + batch_size]
            self.start += batch_size
            return {input_name: batch}

        def rewind(self):
            self.start = 0

        def __len__(self):
            return len(images)

    return ImageReader()


def _input_name(fp32_path: str | Path) -> str:
    """The graph input the calibration images feed (read from the file: calibration needs no exporter)."""
    return onnx.load(str(fp32_path), load_external_data=False).graph.input[0].name


def cache_key(fp32_path: str | Path, method: str, samples: int, scheme: str = "tensorrt") -> str:
    digest = hashlib.sha256(Path(fp32_path).read_bytes()).hexdigest()[:16]
    return f"{digest}-{method}-{samples}" + ("" if scheme == "tensorrt" else f"-{scheme}")


# How each INT8 file quantizes. "tensorrt": symmetric int8 activations (zero point 0, the only kind TensorRT
# accepts) and full-range symmetric per-channel int8 weights. "cpu": the same symmetric Q/DQ with 7-bit weights
# (|w| <= 64, ONNX Runtime's reduce_range), so the u8 x s8 pair sums of ONNX Runtime's x86 kernels without VNNI
# stay <= 2 x 255 x 64 = 32,640 and never saturate int16 (see gemdeploy.calibration.x86_emulation).
SCHEMES = {
    "tensorrt": {"activations": "int8 symmetric per-tensor", "weights": "int8 symmetric per-channel",
                 "reduce_range": False},
    "cpu": {"activations": "int8 symmetric per-tensor",
            "weights": "int8 symmetric per-channel, 7-bit range (reduce_range: |w| <= 64)", "reduce_range": True},
}


def quantize_int8(fp32_path: str | Path, out_path: str | Path, images: torch.Tensor | np.ndarray, *,
                  method: str = "entropy", cache_dir: str | Path | None = None, batch_size: int = 64,
                  scheme: str = "tensorrt") -> dict:
    """Write the Q/DQ INT8 model of ``fp32_path`` to ``out_path`` with ``scheme`` (see SCHEMES); returns a record
    of the calibration."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    if scheme not in SCHEMES:
        raise unknown_choice("INT8 scheme", scheme, list(SCHEMES))
    how = SCHEMES[scheme]
    calib = _ort_method(method)
    if isinstance(images, torch.Tensor):
        images = images.detach().cpu().float().numpy()
    images = np.ascontiguousarray(images, dtype=np.float32)
    if len(images) == 0:
        raise GemdeployError("--calib-samples must be at least 1")
    key = cache_key(fp32_path, method, len(images), scheme)
    cache_path = Path(cache_dir) / f"{key}.json" if cache_dir else None
    hit = cache_path is not None and cache_path.is_file()
    if cache_path is not None:
        cache_path.parent.mkdir(parents=True, exist_ok=True)
    extra = {
        "ActivationSymmetric": True,  # zero point 0 for activations: TensorRT accepts only symmetric Q/DQ
        "WeightSymmetric": True,
        "CalibMovingAverage": False,
        "CalibPercentile": 99.999,
        "CalibNumBins": 2048,
        # Q/DQ around every quantizable input (what TensorRT's explicit-quantization fuser expects)
        "QDQKeepRemovableActivations": False,
    }
    start = time.perf_counter()
    tmp_cache = None
    if cache_path is not None and not hit:
        tmp_cache = cache_path.with_name(f".{cache_path.name}.tmp")
    try:
        with quiet():
            reader = None if hit else _reader(images, batch_size, _input_name(fp32_path))
            quantize_static(str(fp32_path), str(out_path), reader,
                            quant_format=QuantFormat.QDQ, per_channel=True, reduce_range=how["reduce_range"],
                            activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                            op_types_to_quantize=["Conv", "Gemm", "MatMul"],
                            calibrate_method=calib, extra_options=extra,
                            calibration_cache_path=str(cache_path if hit else tmp_cache) if cache_path else None)
        if tmp_cache is not None and tmp_cache.is_file():
            tmp_cache.replace(cache_path)  # the cache appears only once it is complete
    except GemdeployError:
        raise
    except Exception as exc:  # noqa: BLE001 - ORT's quantizer raises many types
        raise GemdeployError(f"INT8 quantization failed: {str(exc).strip().splitlines()[0]}") from None
    finally:
        if tmp_cache is not None:
            tmp_cache.unlink(missing_ok=True)
    return {"method": method, "samples": int(len(images)), "cache": str(cache_path) if cache_path else None,
            "cache_key": key, "cache_hit": bool(hit), "seconds": round(time.perf_counter() - start, 3),
            "scheme": scheme, "activations": how["activations"], "weights": how["weights"],
            "reduce_range": how["reduce_range"], "format": "QDQ (QuantizeLinear/DequantizeLinear)"}


def qdq_report(proto: onnx.ModelProto) -> dict:
    """Q/DQ structure: which Conv/Gemm/MatMul weights are dequantized from INT8 (and per-channel), and
    whether every zero point is 0 (symmetric)."""
    inits = {i.name: i for i in proto.graph.initializer}
    producers = {out: n for n in proto.graph.node for out in n.output}
    zero_points_ok, zp_count = True, 0
    for n in proto.graph.node:
        if n.op_type in ("QuantizeLinear", "DequantizeLinear") and len(n.input) > 2 and n.input[2] in inits:
            zp_count += 1
            if np.any(numpy_helper.to_array(inits[n.input[2]]) != 0):
                zero_points_ok = False
    layers = {}
    for n in proto.graph.node:
        if n.op_type not in ("Conv", "Gemm", "MatMul"):
            continue
        w = producers.get(n.input[1])
        x = producers.get(n.input[0])
        weight_q = w is not None and w.op_type == "DequantizeLinear" and w.input[0] in inits and \
            inits[w.input[0]].data_type == onnx.TensorProto.INT8
        per_channel = bool(weight_q and len(inits[w.input[1]].dims) == 1 and inits[w.input[1]].dims[0] > 1) \
            if weight_q and w.input[1] in inits else False
        layers[n.name or n.output[0]] = {"op": n.op_type, "weight_int8": bool(weight_q), "per_channel": per_channel,
                                         "input_dequantized": bool(x is not None and x.op_type == "DequantizeLinear")}
    ops = [n.op_type for n in proto.graph.node]
    return {"quantize_linear": ops.count("QuantizeLinear"), "dequantize_linear": ops.count("DequantizeLinear"),
            "zero_points": zp_count, "symmetric": zero_points_ok, "layers": layers}
