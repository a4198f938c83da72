"""Inference backends by name (the `bench --backend` choices and `doctor`'s list), one module per runtime.

Each backend says whether it can run here (and why not), which artifact of a run it runs, and how to time it.
"""

from gemdeploy.registry import Registry

_B = "gemdeploy.bench.backends"
BACKENDS: Registry = Registry("backend", {
    "pytorch-cpu": (f"{_B}.pytorch:TorchCpu", "PyTorch eager on the CPU (the compacted model when there is one)"),
    "pytorch-cuda": (f"{_B}.pytorch:TorchCuda", "PyTorch eager on a CUDA GPU (channels-last)"),
    "pytorch-cuda-fp16": (f"{_B}.cuda_graph:TorchCudaFp16", "PyTorch on a CUDA GPU in fp16, one CUDA graph per batch size"),
    "pytorch-cuda-bf16": (f"{_B}.cuda_graph:TorchCudaBf16", "PyTorch on a CUDA GPU in bf16, one CUDA graph per batch size (opt-in: --backend)"),
    "pytorch-cuda-2:4": (f"{_B}.cuda_graph:TorchCudaSemiStructured", "fp16 CUDA graphs with 2:4 semi-structured weights on the layers measured faster (opt-in: --backend)"),
    "pytorch-compile-cpu": (f"{_B}.pytorch:TorchCompileCpu", "torch.compile'd PyTorch on the CPU (opt-in: --backend)"),
    "pytorch-compile-cuda": (f"{_B}.pytorch:TorchCompileCuda", "torch.compile'd PyTorch on a CUDA GPU (opt-in: --backend)"),
    "onnxruntime-cpu": (f"{_B}.onnxruntime:OrtCpu", "ONNX Runtime, CPUExecutionProvider (every exported precision)"),
    "onnxruntime-cuda": (f"{_B}.onnxruntime:OrtCuda", "ONNX Runtime, CUDAExecutionProvider (onnxruntime-gpu)"),
    "tensorrt": (f"{_B}.tensorrt:TensorRT", "TensorRT engines built by `gemdeploy export --trt`"),
    "sparse-cpu": (f"{_B}.sparse_cpu:SparseCpu", "gemdeploy's sparse CPU runtime, numpy + scipy (export --precision sparse-cpu)"),
    "sparse-cpu-torch": (f"{_B}.sparse_cpu:SparseCpuTorch", "the sparse CPU runtime with torch's MKL kernels (opt-in: --backend)"),
})
