"""The whole training step captured in one CUDA graph (`mine --cuda-graph`), replayed for every batch.

A training step of a small network (ResNet-20 at batch 128) is bound by launching its few hundred small kernels,
not by the GPU's arithmetic; a graph replay launches them all at once. What the step does is exactly the eager
step's (gemdeploy.train.loop.TrainStep: forward, loss + penalty, backward, SGD, the after-step hook, the epoch's
sums), following torch.cuda.graph's documented recipe for whole-network capture:

- a few eager warm-up steps on a side stream first (cuDNN autotuning, lazy initialization, SGD's momentum buffers
  are created there, outside the graph); they are real steps on real batches, counted like any other;
- the step reads its batch from static input tensors, copied into before every replay; it holds every tensor it
  writes (gradients live in the graph's memory pool, parameters, momentum buffers and sums are updated in place);
- the learning rate is a device tensor (a Python float would be baked into the captured kernels), written by
  `set_lr` between epochs; SGD runs its fused kernel, which reads it from device memory;
- autocast without its weight-cast cache (torch's rule for capture under autocast).

Shapes must not change between replays: training batches come with drop_last=True, so every batch of an epoch
has the captured shape; a batch of any other shape (a split smaller than one batch) runs eagerly, outside the graph.
Anything that changes the step's tensors between epochs must do it in place (Gem-Miner's freezing copies into its
flag buffer; a checkpoint is restored before the step is built).
"""

from __future__ import annotations

from typing import Callable

import torch

from gemdeploy.errors import GemdeployError
from gemdeploy.train.loop import Hardware, TrainStep

WARMUP_STEPS = 3  # eager steps before capture (the docs' example uses 3; cuDNN's autotuner needs 1)


class GraphedStep(TrainStep):
    """A `TrainStep` that captures itself in a CUDA graph after ``WARMUP_STEPS`` eager steps of one batch shape."""

    def __init__(self, forward: Callable[[torch.Tensor], torch.Tensor], optimizer: torch.optim.Optimizer,
                 hw: Hardware, penalty: Callable[[], torch.Tensor] | None = None,
                 after_step: Callable[[], None] | None = None):
        if hw.device.type != "cuda":
            raise GemdeployError(f"--cuda-graph needs a CUDA device; this run is on {hw.device}")
        if not isinstance(optimizer, torch.optim.SGD):
            raise GemdeployError(f"--cuda-graph captures SGD steps only, not {type(optimizer).__name__}")
        super().__init__(forward, optimizer, hw, penalty, after_step)
        for group in optimizer.param_groups:
            group["lr"] = torch.tensor(float(group["lr"]), dtype=torch.float32, device=hw.device)
            group["fused"], group["foreach"] = True, False  # the fused kernel takes the lr as a device tensor
        self.graph: torch.cuda.CUDAGraph | None = None
        self.key: tuple | None = None  # the batch geometry being warmed up, then the captured one
        self.warm = 0
        self.side = torch.cuda.Stream(device=hw.device)
        self.static_x: torch.Tensor | None = None
        self.static_y: torch.Tensor | None = None
        self.replays = 0
        self.eager_steps = 0

    @staticmethod
    def _geometry(x: torch.Tensor, y: torch.Tensor) -> tuple:
        return (tuple(x.shape), x.stride(), x.dtype, tuple(y.shape), y.stride(), y.dtype)

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        key = self._geometry(x, y)
        if self.graph is not None and key == self.key:
            self.static_x.copy_(x, non_blocking=True)
            self.static_y.copy_(y, non_blocking=True)
            self.graph.replay()
            self.replays += 1
        elif self.graph is None and key == self.key and self.warm >= WARMUP_STEPS:
            self._capture(x, y)
        elif self.graph is None:
            self._warm_up(x, y, key)
        else:  # another shape than the captured one: eagerly, outside the graph
            self.run(x, y)
            self.eager_steps += 1
        self.count += len(y)

    def _warm_up(self, x: torch.Tensor, y: torch.Tensor, key: tuple) -> None:
        if key != self.key:
            self.key, self.warm = key, 0
        current = torch.cuda.current_stream(self.hw.device)
        self.side.wait_stream(current)
        with torch.cuda.stream(self.side):
            self.run(x, y)
        current.wait_stream(self.side)
        self.warm += 1
        self.eager_steps += 1

    def _capture(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.static_x, self.static_y = torch.empty_like(x), torch.empty_like(y)
        self.static_x.copy_(x)
        self.static_y.copy_(y)
        self.optimizer.zero_grad(set_to_none=True)  # gradients are allocated inside the graph's pool
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph, capture_error_mode="thread_local"):  # the pin-memory thread may allocate
                self.run(self.static_x, self.static_y, autocast_cache=False)
        except RuntimeError as exc:
            reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
            raise GemdeployError(f"--cuda-graph: this training step cannot be captured in a CUDA graph ({reason}); "
                                 "run without --cuda-graph") from None
        self.graph = graph
        graph.replay()  # capturing recorded the step without running it
        self.replays += 1
