"""The inference backends `bench` can time, what each needs, and a runner per (run, backend, precision).

A runner maps a batch of normalized float images (CPU tensor) to logits (numpy) and exposes ``time(batch,
iters, warmup)`` returning per-iteration seconds measured the right way for its device: wall clock on the
CPU, CUDA events (after synchronization) on the GPU.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from gemdeploy.errors import GemdeployError


@dataclass
class Backend:
    name: str  # e.g. "pytorch-cpu", "onnxruntime-cuda", "tensorrt"
    kind: str  # "pytorch" | "onnxruntime" | "tensorrt"
    device: str  # "cpu" | "cuda"
    provider: str | None = None  # ONNX Runtime execution provider
    compile: bool = False


@dataclass
class Unavailable:
    backend: str
    reason: str


def discover(compile: bool = False) -> tuple[list[Backend], list[Unavailable]]:
    """Every backend this machine can run, and why each other one can't."""
    have, missing = [Backend("pytorch-cpu", "pytorch", "cpu")], []
    cuda = torch.cuda.is_available()
    why_no_cuda = "no CUDA GPU visible to PyTorch"
    if cuda:
        have.append(Backend("pytorch-cuda", "pytorch", "cuda"))
    else:
        missing.append(Unavailable("pytorch-cuda", why_no_cuda))
    if compile:
        have.append(Backend("pytorch-compile-cpu", "pytorch", "cpu", compile=True))
        if cuda:
            have.append(Backend("pytorch-compile-cuda", "pytorch", "cuda", compile=True))
    try:
        import onnxruntime as ort

        providers = ort.get_available_providers()
    except ImportError:
        providers = []
        missing.append(Unavailable("onnxruntime", "onnxruntime is not installed (pip install -e '.[cpu]' or '.[gpu]')"))
    if "CPUExecutionProvider" in providers:
        have.append(Backend("onnxruntime-cpu", "onnxruntime", "cpu", "CPUExecutionProvider"))
    if "CUDAExecutionProvider" in providers and cuda:
        have.append(Backend("onnxruntime-cuda", "onnxruntime", "cuda", "CUDAExecutionProvider"))
    elif providers:
        missing.append(Unavailable("onnxruntime-cuda", "ONNX Runtime has no CUDAExecutionProvider (install onnxruntime-gpu: "
                                   "pip install -e '.[gpu]')" if "CUDAExecutionProvider" not in providers else why_no_cuda))
    from gemdeploy.exporters.tensorrt_build import cuda_status, tensorrt_status

    trt, gpu = tensorrt_status(), cuda_status()
    if trt["available"] and gpu["available"]:
        have.append(Backend("tensorrt", "tensorrt", "cuda"))
    else:
        missing.append(Unavailable("tensorrt", trt["reason"] or f"no CUDA GPU ({gpu['reason']})"))
    return have, missing


def percentile(times: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(times), q))


class Runner:
    device = "cpu"
    max_batch: int | None = None

    def predict(self, images: torch.Tensor) -> np.ndarray:
        raise NotImplementedError

    def time(self, images: torch.Tensor, iters: int, warmup: int) -> list[float]:
        """Seconds per call on ``images`` (CPU wall clock; overridden for CUDA)."""
        fn = self._timed_call(images)
        for _ in range(warmup):
            fn()
        out = []
        for _ in range(iters):
            start = time.perf_counter()
            fn()
            out.append(time.perf_counter() - start)
        return out

    def _timed_call(self, images: torch.Tensor) -> Callable[[], object]:
        return lambda: self.predict(images)


def _cuda_event_times(fn: Callable[[], object], iters: int, warmup: int) -> list[float]:
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    out = []
    for _ in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        out.append(start.elapsed_time(end) / 1000.0)
    return out


class TorchRunner(Runner):
    def __init__(self, model: torch.nn.Module, backend: Backend):
        self.device = backend.device
        model = model.eval().to(backend.device)
        if backend.device == "cuda":
            model = model.to(memory_format=torch.channels_last)
        self.model = torch.compile(model) if backend.compile else model

    @torch.inference_mode()
    def predict(self, images):
        return self.model(images.to(self.device)).float().cpu().numpy()

    def time(self, images, iters, warmup):
        if self.device != "cuda":
            with torch.inference_mode():
                return super().time(images, iters, warmup)
        x = images.to("cuda").contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            return _cuda_event_times(lambda: self.model(x), iters, warmup)

    def _timed_call(self, images):
        return lambda: self.model(images)  # input already on the CPU: time the model, not a copy


class OrtRunner(Runner):
    def __init__(self, path: Path, backend: Backend, threads: int):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        self.device = backend.device
        try:
            self.session = ort.InferenceSession(str(path), sess_options=opts, providers=[backend.provider])
        except Exception as exc:  # noqa: BLE001 - ORT raises its own exception types
            raise GemdeployError(f"ONNX Runtime cannot load {path}: {str(exc).strip().splitlines()[0]}") from None
        self.input = self.session.get_inputs()[0].name
        self.output = self.session.get_outputs()[0].name
        self.dtype = np.float16 if "float16" in self.session.get_inputs()[0].type else np.float32

    def predict(self, images):
        x = images.detach().cpu().numpy().astype(self.dtype)
        return self.session.run([self.output], {self.input: x})[0].astype(np.float32)

    def _timed_call(self, images):
        x = images.detach().cpu().numpy().astype(self.dtype)
        return lambda: self.session.run([self.output], {self.input: x})


class TensorRTRunner(Runner):
    """A deserialized engine run through TensorRT's Python runtime with device buffers and a CUDA stream."""

    device = "cuda"

    def __init__(self, path: Path, sidecar: dict):
        import tensorrt as trt

        self.trt = trt
        logger = trt.Logger(trt.Logger.WARNING)
        self.engine = trt.Runtime(logger).deserialize_cuda_engine(Path(path).read_bytes())
        if self.engine is None:
            raise GemdeployError(f"TensorRT cannot deserialize {path} (built by another TensorRT version or GPU?)")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.input = next(n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT)
        self.output = next(n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT)
        self.in_dtype = torch.float16 if self.engine.get_tensor_dtype(self.input) == trt.DataType.HALF else torch.float32
        self.max_batch = int(sidecar["profile"]["max"][0])
        self.min_batch = int(sidecar["profile"]["min"][0])
        self.stream = torch.cuda.Stream()

    def _bind(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = images.to("cuda", self.in_dtype).contiguous()
        self.context.set_input_shape(self.input, tuple(x.shape))
        out_shape = tuple(self.context.get_tensor_shape(self.output))
        out_dtype = torch.float16 if self.engine.get_tensor_dtype(self.output) == self.trt.DataType.HALF else torch.float32
        y = torch.empty(out_shape, device="cuda", dtype=out_dtype)
        self.context.set_tensor_address(self.input, x.data_ptr())
        self.context.set_tensor_address(self.output, y.data_ptr())
        return x, y

    def predict(self, images):
        x, y = self._bind(images)
        with torch.cuda.stream(self.stream):
            self.context.execute_async_v3(self.stream.cuda_stream)
        self.stream.synchronize()
        return y.float().cpu().numpy()

    def time(self, images, iters, warmup):
        x, y = self._bind(images)

        def call():
            with torch.cuda.stream(self.stream):
                self.context.execute_async_v3(self.stream.cuda_stream)

        with torch.cuda.stream(self.stream):
            return _cuda_event_times(call, iters, warmup)
