"""TensorRT: engines built by `gemdeploy export --trt`, run through TensorRT's Python runtime with device buffers
and a CUDA stream."""

from __future__ import annotations

from pathlib import Path

import torch

from gemdeploy.bench.backends.base import Artifact, Backend, Runner, cuda_event_times
from gemdeploy.errors import GemdeployError
from gemdeploy.exporters.tensorrt_build import cuda_status, tensorrt_status
from gemdeploy.exporters.precisions import PRECISIONS
from gemdeploy.files import read_object


class TensorRTRunner(Runner):
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
            return cuda_event_times(call, iters, warmup)


class TensorRT(Backend):
    name, device = "tensorrt", "cuda"
    needs = "TensorRT engine"

    def unavailable(self):
        trt, gpu = tensorrt_status(), cuda_status()
        if trt["available"] and gpu["available"]:
            return None
        return trt["reason"] or f"no CUDA GPU ({gpu['reason']})"

    def artifacts(self, run, threads):
        found = []
        for p in PRECISIONS.names():
            plan = run.exports.engine(p)
            if plan is not None:
                side = read_object(run.exports.sidecar(plan), {"profile": dict})
                found.append(Artifact(p, f"tensorrt {p}", plan, lambda f=plan, s=side: TensorRTRunner(f, s),
                                      run.exports.record.get("source")))
        return found

    def missing_hint(self, run):
        return f"gemdeploy export {run.art.run.path} --trt (on the GPU machine)"
