"""What every backend provides: availability, the artifacts of a run it can run, and a runner that maps a batch of
normalized float images (CPU tensor) to logits (numpy) and times calls the right way for its device (wall clock
on the CPU, CUDA events after synchronization on the GPU)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch


@dataclass
class Artifact:
    precision: str
    label: str  # "torch compacted", "onnx int8", ...
    path: Path  # the file it runs (its size is reported)
    make: Callable[[], "Runner"]
    source: str | None = None  # the model it was made from: "compacted" | "finetuned" (gemdeploy.compact.deploy)


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

    def notes(self, batch: int) -> dict:
        """What the backend decided at ``batch`` beyond the timing (e.g. which layers went sparse), for bench.json."""
        return {}


def cuda_event_times(fn: Callable[[], object], iters: int, warmup: int) -> list[float]:
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


class Backend:
    name = ""
    device = "cpu"
    opt_in = False  # timed only when asked for by name (--backend)
    needs = "artifact"  # what it runs, for "RUN has no <needs>" messages
    fp32_baseline: str | None = None  # where its rows find the dense fp32 row when it has none of its own

    def unavailable(self) -> str | None:
        """Why this backend cannot run here (None when it can)."""
        return None

    def artifacts(self, run, threads: int) -> list[Artifact]:
        """What ``run`` (a bench RunInfo: ``run.deployed()``, ``run.exports``) offers this backend; empty when it
        has nothing for it (bench lists that pair as a gap)."""
        raise NotImplementedError

    def missing_hint(self, run) -> str:
        """The command that makes what this backend needs from ``run``."""
        return f"gemdeploy export {run.art.run.path}"
