"""Export precisions by name (the `export --precision` choices), one module each. fp32 always runs first: it is
the reference every other precision is checked against."""

from gemdeploy.registry import Registry

_P = "gemdeploy.exporters.precisions"
PRECISIONS: Registry = Registry("precision", {
    "fp32": (f"{_P}.fp32:Fp32", "ONNX fp32, opset 18, dynamic batch; checked against PyTorch (|diff| <= 1e-4 x scale)"),
    "fp16": (f"{_P}.fp16:Fp16", "ONNX with fp16 weights and activations inside (fp32 I/O); top-1 agreement >= 99.5%"),
    "int8": (f"{_P}.int8:Int8", "ONNX with explicit symmetric Q/DQ (what TensorRT builds as INT8); accuracy vs fp32"),
    "int8-cpu": (f"{_P}.int8_cpu:Int8Cpu", "int8 with 7-bit weights, for ONNX Runtime on CPU (no saturation without VNNI)"),
    "sparse-cpu": (f"{_P}.sparse_cpu:SparseCpu", "CSR weights + op graph for gemdeploy's sparse CPU runtime (numpy + "
                   "scipy); per-layer kernel timed at export; logits vs PyTorch on the test split"),
})
