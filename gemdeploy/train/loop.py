"""The training core shared by every method: device setup, one epoch of SGD, evaluation, schedules."""

from __future__ import annotations

import math
import os
import time
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import nn

from gemdeploy.train import distributed as dist
from gemdeploy.errors import GemdeployError


# The memory layout and precision the training core runs in: "auto" is what the device is fast with (CUDA:
# channels_last weights and activations under bf16 autocast; CPU: contiguous fp32); "cuda" forces CUDA's on any
# device, so the CPU test suite runs exactly the code path a GPU runs (a channels_last mask once broke 5 of 10
# methods on CUDA while every CPU test passed); "plain" forces contiguous fp32.
LAYOUT_ENV = "GEMDEPLOY_LAYOUT"
LAYOUTS = ("auto", "cuda", "plain")


@dataclass
class Hardware:
    device: torch.device
    amp_dtype: torch.dtype | None  # bf16 autocast in the CUDA layout
    channels_last: bool
    compile: bool = False
    cuda_graph: bool = False  # capture the whole training step once per phase and replay it (gemdeploy.train.graph)

    @classmethod
    def resolve(cls, name: str = "auto", compile: bool = False, layout: str | None = None,
                cuda_graph: bool = False) -> "Hardware":
        """The device ``name`` with the layout ``layout`` (default: $GEMDEPLOY_LAYOUT, else "auto")."""
        layout = layout or os.environ.get(LAYOUT_ENV) or "auto"
        if layout not in LAYOUTS:
            raise GemdeployError(f"unknown layout {layout!r} (from ${LAYOUT_ENV}); choose {', '.join(LAYOUTS)}")
        if name not in ("auto", "cpu", "cuda") and not name.startswith("cuda:"):
            raise GemdeployError(f"unknown device {name!r}; choose auto, cpu or cuda")
        if name.startswith("cuda") and not torch.cuda.is_available():
            raise GemdeployError("--device cuda asked for, but no CUDA GPU is visible to PyTorch (see `gemdeploy doctor`)")
        if name == "auto":
            name = "cuda" if torch.cuda.is_available() else "cpu"
        device = torch.device(name)
        if device.type == "cuda" and device.index is None and dist.is_distributed():
            device = torch.device("cuda", torch.cuda.current_device())
        cuda = device.type == "cuda"
        if cuda:
            torch.backends.cudnn.benchmark = True
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        if cuda_graph:
            if not cuda:
                raise GemdeployError(f"--cuda-graph needs a CUDA device; this run is on {device}")
            if compile:
                raise GemdeployError("--cuda-graph and --compile exclude each other (pick one: both remove launch "
                                     "overhead, compile's reduce-overhead mode with CUDA graphs of its own)")
            if dist.is_distributed():
                raise GemdeployError("--cuda-graph runs in one process only; drop it with --nproc-per-node or torchrun")
        cuda_layout = layout == "cuda" or (layout == "auto" and cuda)
        return cls(device, torch.bfloat16 if cuda_layout else None, cuda_layout, compile, cuda_graph)

    def describe(self) -> str:
        """'channels_last, bf16 autocast' or 'contiguous, fp32' (+ ', CUDA-graph step'): what summary.json records
        next to the device."""
        memory = "channels_last" if self.channels_last else "contiguous"
        graph = ", CUDA-graph step" if self.cuda_graph else ""
        return f"{memory}, {'bf16 autocast' if self.amp_dtype == torch.bfloat16 else 'fp32'}{graph}"

    def autocast(self, cache: bool = True):
        """bf16 autocast in the CUDA layout. ``cache=False`` inside a CUDA-graph capture: autocast's cache of cast
        weights must not outlive the capture (torch.cuda.graph's documented rule)."""
        if self.amp_dtype is None:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype, cache_enabled=cache)

    def prepare(self, model: nn.Module) -> nn.Module:
        model = model.to(self.device)
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
        return model


def maybe_compile(module: nn.Module, hw: Hardware) -> Callable:
    return torch.compile(module) if hw.compile else module


@dataclass
class EpochStats:
    loss: float
    acc: float
    images: int
    seconds: float

    @property
    def images_per_s(self) -> float:
        return self.images / max(self.seconds, 1e-9)


def _reduce(loss_sum: torch.Tensor, correct: torch.Tensor, count: int, device) -> tuple[float, float, int]:
    t = torch.stack([loss_sum.detach().float(), correct.detach().float(),
                     torch.tensor(float(count), device=device)])
    t = dist.all_reduce_sum(t)
    n = max(1.0, float(t[2]))
    return float(t[0]) / n, float(t[1]) / n, int(t[2])


class TrainStep:
    """One SGD step on a batch (forward, loss + penalty, backward, step, ``after_step``), summing the epoch's loss and
    correct predictions on the device (no host sync per step). A phase builds one and reuses it every epoch."""

    def __init__(self, forward: Callable[[torch.Tensor], torch.Tensor], optimizer: torch.optim.Optimizer,
                 hw: Hardware, penalty: Callable[[], torch.Tensor] | None = None,
                 after_step: Callable[[], None] | None = None):
        self.forward, self.optimizer, self.hw = forward, optimizer, hw
        self.penalty, self.after_step = penalty, after_step
        self.loss_sum = torch.zeros((), device=hw.device)
        self.correct = torch.zeros((), device=hw.device)
        self.count = 0

    def reset(self) -> None:
        """Start an epoch's sums (in place: a captured step keeps writing into the same tensors)."""
        self.loss_sum.zero_()
        self.correct.zero_()
        self.count = 0

    def run(self, x: torch.Tensor, y: torch.Tensor, autocast_cache: bool = True) -> None:
        with self.hw.autocast(autocast_cache):
            logits = self.forward(x)
            loss = F.cross_entropy(logits.float(), y)
        total = loss + self.penalty() if self.penalty is not None else loss
        self.optimizer.zero_grad(set_to_none=True)
        total.backward()
        self.optimizer.step()
        if self.after_step is not None:
            self.after_step()
        self.loss_sum += loss.detach() * len(y)
        self.correct += (logits.argmax(1) == y).sum()

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.run(x, y)
        self.count += len(y)


def make_step(forward: Callable[[torch.Tensor], torch.Tensor], optimizer: torch.optim.Optimizer, hw: Hardware,
              penalty: Callable[[], torch.Tensor] | None = None,
              after_step: Callable[[], None] | None = None) -> TrainStep:
    """The training step ``hw`` asks for: eager, or captured in a CUDA graph (``hw.cuda_graph``)."""
    if hw.cuda_graph:
        from gemdeploy.train.graph import GraphedStep  # here, not at the top: graph.py builds on TrainStep

        return GraphedStep(forward, optimizer, hw, penalty, after_step)
    return TrainStep(forward, optimizer, hw, penalty, after_step)


def train_epoch(forward: Callable[[torch.Tensor], torch.Tensor], optimizer: torch.optim.Optimizer, split,
                hw: Hardware, *, epoch: int, seed: int, batch_size: int,
                penalty: Callable[[], torch.Tensor] | None = None,
                after_step: Callable[[], None] | None = None, step: TrainStep | None = None) -> EpochStats:
    """One pass over ``split`` (this rank's shard of it) with SGD; returns all-reduced stats.

    ``batch_size`` is the global batch: each of the data-parallel ranks takes its share of it. ``step`` (from
    `make_step`, kept across epochs so a CUDA graph is captured once) replaces forward/optimizer/penalty/after_step.
    """
    start = time.perf_counter()
    per_rank = max(1, batch_size // dist.world_size())
    step = step or make_step(forward, optimizer, hw, penalty, after_step)
    step.reset()
    for x, y in split.batches(per_rank, epoch=epoch, train=True, seed=seed, rank=dist.rank(),
                              world_size=dist.world_size(), drop_last=True):
        step(x, y)
    loss, acc, n = _reduce(step.loss_sum, step.correct, step.count, hw.device)
    if hw.device.type == "cuda":
        torch.cuda.synchronize(hw.device)
    return EpochStats(loss, acc, n, time.perf_counter() - start)


@torch.no_grad()
def evaluate(forward: Callable[[torch.Tensor], torch.Tensor], split, hw: Hardware, batch_size: int = 500) -> EpochStats:
    """Accuracy and loss on ``split``; the caller puts the model in eval mode."""
    start = time.perf_counter()
    loss_sum = torch.zeros((), device=hw.device)
    correct = torch.zeros((), device=hw.device)
    count = 0
    for x, y in split.batches(batch_size, rank=dist.rank(), world_size=dist.world_size()):
        with hw.autocast():
            logits = forward(x).float()
        loss_sum += F.cross_entropy(logits, y, reduction="sum")
        correct += (logits.argmax(1) == y).sum()
        count += len(y)
    loss, acc, n = _reduce(loss_sum, correct, count, hw.device)
    return EpochStats(loss, acc, n, time.perf_counter() - start)


def sgd(params: Iterable[torch.Tensor], lr: float, momentum: float, weight_decay: float) -> torch.optim.SGD:
    """SGD; on a GPU its fused kernel (one launch per step for every parameter, where the default foreach path
    takes three and a per-parameter loop three per parameter). The CPU keeps torch's default, so its results stay."""
    params = list(params)
    fused = bool(params) and all(p.device.type == "cuda" and p.dtype.is_floating_point for p in params)
    return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay, fused=fused or None)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        if isinstance(group["lr"], torch.Tensor):  # a CUDA-graph step reads it from device memory
            group["lr"].fill_(lr)
        else:
            group["lr"] = lr


def current_lr(optimizer: torch.optim.Optimizer) -> float:
    return float(optimizer.param_groups[0]["lr"])


def cosine_lr(base: float, epoch: int, epochs: int) -> float:
    return 0.5 * base * (1 + math.cos(math.pi * epoch / max(1, epochs)))


PAPER_MILESTONES = (80 / 150, 120 / 150)  # the paper's fine-tuning: x0.1 at epochs 80 and 120 of 150


def step_lr(base: float, epoch: int, epochs: int, milestones: tuple[float, ...] = PAPER_MILESTONES) -> float:
    """x0.1 at each milestone fraction of the run (scaled to ``epochs``; none below 3 epochs)."""
    drops = sum(epoch >= round(epochs * f) for f in milestones) if epochs >= 3 else 0
    return base * (0.1**drops)


@dataclass(frozen=True)
class Recipe:
    """How a phase trains: SGD with momentum and weight decay, and a learning-rate schedule over its epochs."""

    lr: float
    momentum: float
    weight_decay: float
    schedule: str = "step"  # "step" (x0.1 at each milestone), "cosine" or "constant"
    milestones: tuple[float, ...] = PAPER_MILESTONES  # fractions of the epochs, for "step"

    def lr_at(self, epoch: int, epochs: int) -> float:
        if self.schedule == "cosine":
            return cosine_lr(self.lr, epoch, epochs)
        if self.schedule == "constant":
            return self.lr
        return step_lr(self.lr, epoch, epochs, self.milestones)

    def optimizer(self, params: Iterable[torch.Tensor]) -> torch.optim.SGD:
        return sgd(params, self.lr, self.momentum, self.weight_decay)

    def describe(self, epochs: int) -> str:
        if self.schedule == "step":
            at = "/".join(str(round(epochs * f)) for f in self.milestones) if epochs >= 3 else "-"
            sched = f"x0.1 at epochs {at}"
        else:
            sched = self.schedule
        return (f"SGD lr {self.lr:g}, momentum {self.momentum:g}, wd {self.weight_decay:g}, {sched}, "
                f"{epochs} epochs")

    def to_json(self) -> dict:
        return {"lr": self.lr, "momentum": self.momentum, "weight_decay": self.weight_decay,
                "schedule": self.schedule, "milestones": list(self.milestones)}
