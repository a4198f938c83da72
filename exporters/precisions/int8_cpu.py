"""INT8 for ONNX Runtime on CPUs: the int8 file's symmetric Q/DQ with 7-bit weights (|w| <= 64).

ONNX Runtime's x86 INT8 kernels without VNNI add pairs of u8 x s8 products in a saturating int16; with full-range
weights (|w| <= 127) a pair can reach 64,770 and is clipped, so the same Q/DQ file can lose many points on an
AVX2-only CPU while scoring well with VNNI, on ARM, or in TensorRT. 7-bit weights bound every pair by
2 x 255 x 64 = 32,640 < 32,767: the fused kernels then compute the Q/DQ numerics exactly on every CPU, at the
price of one bit of weight resolution (measured in BENCHMARKS.md, "Export"). The export refuses the file if any
weight exceeds that bound.
"""

from __future__ import annotations

from gemdeploy.exporters import layout
from gemdeploy.exporters.precisions.int8 import Int8


class Int8Cpu(Int8):
    name = "int8-cpu"
    file = layout.onnx_file("int8-cpu")
    scheme = "cpu"
    target = "ONNX Runtime on CPU (x86 with or without VNNI, ARM)"
    engine = False  # TensorRT builds from model.int8.onnx (full-range weights)
