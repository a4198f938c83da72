"""PyTorch on a CUDA GPU as it is deployed: fp16 or bf16 weights and activations, channels-last, each batch size
captured once into a CUDA graph and replayed (no per-kernel launch cost), and 2:4 semi-structured sparse weights on
the layers where they measured faster (`pytorch-cuda-2:4`).

The backends run the same model as `pytorch-cuda` (they take its artifact), so their rows compare with that
backend's fp32 eager rows of the dense run.
"""

from __future__ import annotations

import contextlib
from typing import Callable

import numpy as np
import torch

from gemdeploy.bench.backends.base import Artifact, Backend, Runner, cuda_event_times

DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}


@contextlib.contextmanager
def cudnn_autotune():
    """cuDNN picks the fastest kernel per shape (during warm-ups), as a deployment does; restored afterwards."""
    saved = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = True
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = saved


def capture(fn: Callable[[torch.Tensor], torch.Tensor], static_input: torch.Tensor,
            warmup: int = 3) -> tuple["torch.cuda.CUDAGraph", torch.Tensor]:
    """``fn(static_input)`` captured into a CUDA graph: warmed up on a side stream first (cuDNN autotuning and lazy
    initialization must not happen during capture), as PyTorch's CUDA graph notes prescribe. Replaying the graph
    recomputes the returned static output from whatever ``static_input`` holds then."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(warmup):
            fn(static_input)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = fn(static_input)
    return graph, out


class CudaGraphRunner(Runner):
    """A model replayed from one CUDA graph per batch size, with a static input buffer the images are copied into."""

    device = "cuda"

    def __init__(self, model: torch.nn.Module, dtype: torch.dtype, convert: bool = True):
        self.dtype = dtype
        model = model.eval()
        self.model = model.to("cuda", dtype).to(memory_format=torch.channels_last) if convert else model
        self.graphs: dict[tuple, tuple] = {}

    def _graph(self, shape: tuple[int, ...]):
        if shape not in self.graphs:
            static = torch.zeros(shape, device="cuda", dtype=self.dtype)
            if static.dim() == 4:
                static = static.contiguous(memory_format=torch.channels_last)
            with torch.no_grad(), cudnn_autotune():
                graph, out = capture(self.model, static)
            self.graphs[shape] = (graph, static, out)
        return self.graphs[shape]

    def _load(self, images: torch.Tensor):
        graph, static, out = self._graph(tuple(images.shape))
        static.copy_(images.to("cuda", self.dtype))
        return graph, out

    def predict(self, images) -> np.ndarray:
        graph, out = self._load(images)
        graph.replay()
        return out.float().cpu().numpy()

    def time(self, images, iters, warmup):
        graph, _ = self._load(images)  # the copy in is not timed, as pytorch-cuda times the model alone
        return cuda_event_times(graph.replay, iters, warmup)


class _GraphBackend(Backend):
    device = "cuda"
    precision = "fp16"
    mode = "cuda-graph"
    fp32_baseline = "pytorch-cuda"  # the rows' fp32 reference: the same model in fp32 eager
    needs = "PyTorch model"

    def unavailable(self):
        if not torch.cuda.is_available():
            return "no CUDA GPU visible to PyTorch"
        if self.precision == "bf16" and not torch.cuda.is_bf16_supported():
            return f"{torch.cuda.get_device_name(0)} has no bf16 support"
        return None

    def _base(self):
        from gemdeploy.bench.backends.pytorch import TorchCuda

        return TorchCuda()

    def artifacts(self, run, threads):
        return [Artifact(self.precision, f"{a.label} {self.precision} {self.mode}", a.path,
                         lambda a=a: self.runner(a.make().model)) for a in self._base().artifacts(run, threads)]

    def missing_hint(self, run):
        return self._base().missing_hint(run)

    def runner(self, model: torch.nn.Module) -> Runner:
        return CudaGraphRunner(model, DTYPES[self.precision])


class TorchCudaFp16(_GraphBackend):
    name, precision = "pytorch-cuda-fp16", "fp16"


class TorchCudaBf16(_GraphBackend):
    name, precision, opt_in = "pytorch-cuda-bf16", "bf16", True


class SemiStructuredRunner(Runner):
    """fp16 CUDA graphs of the model whose layers run on 2:4 semi-structured weights where they measured faster at
    the batch being timed (the choice is made, and kept, per batch size); ``notes(batch)`` gives every layer's
    verdict. Accuracy (``predict``) runs every layer that can run sparse on its sparse weight, so the sparse
    kernels' numerics are what the accuracy figure checks.

    On the CPU (``device="cpu"``, with a dense stand-in ``sparsify``: the CPU has no 2:4 kernels) it runs the same
    steps eagerly in the given dtype, which is how the GPU benchmark's smoke run exercises it."""

    def __init__(self, model: torch.nn.Module, dtype: torch.dtype = torch.float16, device: str = "cuda",
                 sparsify: Callable[[torch.Tensor], torch.Tensor] | None = None, layer_iters: int = 20):
        from gemdeploy.bench.semi_structured import kernel_library, semi_structured_sparsify

        self.device, self.dtype = device, dtype
        self.kernels = kernel_library() if device == "cuda" else "cusparselt"  # the CPU mirrors the GPU's rules
        self.model = self._place(model.eval().to(device, dtype))
        self.sparsify = sparsify or semi_structured_sparsify()
        self.by_batch: dict[int, tuple[Runner, list[dict], dict]] = {}
        self.all_sparse = None
        self.layer_iters = layer_iters  # timed calls per layer and variant when choosing

    def _place(self, x):
        return x.to(memory_format=torch.channels_last) if self.device == "cuda" else x

    def _input(self, images: torch.Tensor) -> torch.Tensor:
        x = images.to(self.device, self.dtype)
        return x.contiguous(memory_format=torch.channels_last) if self.device == "cuda" and x.dim() == 4 else x

    def _choose(self, images: torch.Tensor, measure: bool):
        from gemdeploy.bench.semi_structured import choose_layers, max_logit_difference

        x = self._input(images)
        name = {torch.float16: "fp16", torch.bfloat16: "bf16"}.get(self.dtype, "fp32")
        model, verdicts = choose_layers(self.model, x, self.sparsify, kernels=self.kernels,
                                        dtype=name if self.device == "cuda" else "fp16", measure=measure,
                                        iters=self.layer_iters, warmup=min(3, self.layer_iters))
        diff, scale = max_logit_difference(self.model, model, x[:8])
        return model, verdicts, {"max_abs_logit_diff": diff, "logit_scale": scale}

    def _for(self, images: torch.Tensor) -> Runner:
        batch = images.shape[0]
        if batch not in self.by_batch:
            from gemdeploy.bench.backends.pytorch import TorchRunner

            model, verdicts, check = self._choose(images, measure=True)
            runner = (CudaGraphRunner(model, self.dtype, convert=False) if self.device == "cuda"
                      else TorchRunner(model, self.device, compile=False))
            self.by_batch[batch] = (runner, verdicts, check)
        return self.by_batch[batch][0]

    def predict(self, images):
        if self.all_sparse is None:
            self.all_sparse = self._choose(images, measure=False)[0]
        with torch.no_grad():
            return self.all_sparse(self._input(images)).float().cpu().numpy()

    def time(self, images, iters, warmup):
        runner = self._for(images)
        with torch.no_grad():
            if self.device != "cuda":
                return runner.time(self._input(images), iters, warmup)
            try:
                return runner.time(images, iters, warmup)
            except RuntimeError as exc:  # a sparse op that cannot be captured: time the same model eagerly, say so
                torch.cuda.synchronize()
                self.by_batch[images.shape[0]][2]["graph"] = f"capture failed, timed eagerly: {str(exc)[:160]}"
                x = self._input(images)
                return cuda_event_times(lambda: runner.model(x), iters, warmup)

    def notes(self, batch: int) -> dict:
        if batch not in self.by_batch:
            return {}
        from gemdeploy.sparsity.kernels24 import verdict_line

        _, verdicts, check = self.by_batch[batch]
        return {"sparse24": {"kernels": self.kernels, "summary": verdict_line(verdicts, batch), "layers": verdicts,
                             **check}}


class TorchCudaSemiStructured(_GraphBackend):
    name, precision, mode, opt_in = "pytorch-cuda-2:4", "fp16", "2:4 cuda-graph", True

    def unavailable(self):
        why = super().unavailable()
        if why is None and torch.cuda.get_device_capability(0) < (8, 0):
            return f"{torch.cuda.get_device_name(0)} has no 2:4 sparse tensor cores (compute capability 8.0+ needed)"
        return why

    def runner(self, model):
        return SemiStructuredRunner(model, DTYPES[self.precision])
