"""ONNX Runtime backends: every exported precision (fp32, fp16, INT8 Q/DQ) on the CPU or CUDA provider."""

from __future__ import annotations

import numpy as np

from gemdeploy.bench.backends.base import Artifact, Backend, Runner
from gemdeploy.errors import GemdeployError
from gemdeploy.exporters.precisions import PRECISIONS


def providers() -> tuple[list[str], str | None]:
    try:
        import onnxruntime as ort

        return ort.get_available_providers(), None
    except Exception as exc:  # noqa: BLE001 - ImportError, or a broken mix of onnxruntime and onnxruntime-gpu
        return [], f"onnxruntime does not import ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__}); " \
                   "install exactly one of gemdeploy[cpu] or gemdeploy[gpu]"


class OrtRunner(Runner):
    def __init__(self, path, device: str, provider: str, threads: int):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        self.device = device
        try:
            self.session = ort.InferenceSession(str(path), sess_options=opts, providers=[provider])
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


class _Ort(Backend):
    provider = ""
    needs = "ONNX export"

    def unavailable(self):
        have, why = providers()
        if why:
            return why
        if self.provider not in have:
            if self.device == "cuda":
                return "ONNX Runtime has no CUDAExecutionProvider (install gemdeploy[gpu], i.e. onnxruntime-gpu)"
            return f"ONNX Runtime has no {self.provider}"
        if self.device == "cuda":
            import torch

            if not torch.cuda.is_available():
                return "no CUDA GPU visible"
        return None

    def artifacts(self, run, threads):
        found = []
        for p in run.exports.precisions():
            if PRECISIONS.get(p).runtime == "onnx":
                f = run.exports.file(p)
                found.append(Artifact(p, f"onnx {p}", f, lambda f=f: OrtRunner(f, self.device, self.provider, threads),
                                      run.exports.record.get("source")))
        return found


class OrtCpu(_Ort):
    name, device, provider = "onnxruntime-cpu", "cpu", "CPUExecutionProvider"


class OrtCuda(_Ort):
    name, device, provider = "onnxruntime-cuda", "cuda", "CUDAExecutionProvider"
