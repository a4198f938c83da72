"""PyTorch backends: eager and torch.compile'd, CPU and CUDA; they run the model the run deploys (the compacted
one unless compaction would break its 2:4 layout: gemdeploy.compact.deploy)."""

from __future__ import annotations

from pathlib import Path

import torch

from gemdeploy.bench.backends.base import Artifact, Backend, Runner, cuda_event_times


def pytorch_source(run) -> tuple[str, Path]:
    """Which PyTorch model a run offers ("compacted" | "finetuned") and its weights file: the one the run deploys."""
    deployed = run.deployed()
    return deployed.source, deployed.weights


def pytorch_model(run) -> torch.nn.Module:
    return run.deployed().model


class TorchRunner(Runner):
    def __init__(self, model: torch.nn.Module, device: str, compile: bool):
        self.device = device
        model = model.eval().to(device)
        if device == "cuda":
            model = model.to(memory_format=torch.channels_last)
        self.model = torch.compile(model) if compile else model

    @torch.inference_mode()
    def predict(self, images):
        return self.model(images.to(self.device)).float().cpu().numpy()

    def time(self, images, iters, warmup):
        if self.device != "cuda":
            with torch.inference_mode():
                return super().time(images, iters, warmup)
        x = images.to("cuda").contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            return cuda_event_times(lambda: self.model(x), iters, warmup)

    def _timed_call(self, images):
        return lambda: self.model(images)  # input already on the CPU: time the model, not a copy


class _Torch(Backend):
    compile = False

    def unavailable(self):
        if self.device == "cuda" and not torch.cuda.is_available():
            return "no CUDA GPU visible to PyTorch"
        return None

    def artifacts(self, run, threads):
        source, path = pytorch_source(run)
        label = "masked" if source == "finetuned" else source
        return [Artifact("fp32", f"torch {label}", path,
                         lambda: TorchRunner(pytorch_model(run), self.device, self.compile), source)]


class TorchCpu(_Torch):
    name, device = "pytorch-cpu", "cpu"


class TorchCuda(_Torch):
    name, device = "pytorch-cuda", "cuda"


class TorchCompileCpu(_Torch):
    name, device, compile, opt_in = "pytorch-compile-cpu", "cpu", True, True


class TorchCompileCuda(_Torch):
    name, device, compile, opt_in = "pytorch-compile-cuda", "cuda", True, True
