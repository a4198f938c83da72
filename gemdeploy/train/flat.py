"""One flat buffer for many per-layer tensors: each layer's tensor is a view of its segment, laid out in that
layer's own memory order (channels_last stays channels_last), so that an elementwise update of every layer is one
operation on the buffer instead of one per layer.

On a GPU a training step of a small network is bound by kernel launches, not by arithmetic (a Gem-Miner step of
ResNet-20 launched ~157 small kernels: masks, score projection, the L2 penalty, one per layer each). Over a flat
buffer those become a handful, whatever the number of layers.
"""

from __future__ import annotations

from typing import Sequence

import torch


def _memory_order(t: torch.Tensor) -> list[int]:
    """The dimensions of ``t`` from outermost to innermost in memory (identity for a contiguous tensor)."""
    return sorted(range(t.dim()), key=lambda d: (-t.stride(d), d))


class FlatLayout:
    """Where each of a list of tensors (``like``: their shapes and memory layouts) lives in one flat buffer."""

    def __init__(self, like: Sequence[torch.Tensor]):
        self.shapes = [tuple(t.shape) for t in like]
        self.sizes = [t.numel() for t in like]
        self.orders = [_memory_order(t) for t in like]
        self.numel = sum(self.sizes)

    def empty(self, device, dtype=torch.float32) -> torch.Tensor:
        return torch.empty(self.numel, device=device, dtype=dtype)

    def _shaped(self, segment: torch.Tensor, i: int) -> torch.Tensor:
        order = self.orders[i]
        if order == sorted(order):
            return segment.view(self.shapes[i])
        inverse = [order.index(d) for d in range(len(order))]
        return segment.view([self.shapes[i][d] for d in order]).permute(inverse)

    def views(self, flat: torch.Tensor) -> list[torch.Tensor]:
        """Per-layer views of ``flat`` (differentiable: one split, whose backward is one concatenation)."""
        return [self._shaped(seg, i) for i, seg in enumerate(flat.split(self.sizes))]

    def fill(self, flat: torch.Tensor, tensors: Sequence[torch.Tensor]) -> None:
        """Copy ``tensors`` (per layer, any layout) into their segments of ``flat``."""
        with torch.no_grad():
            for view, t in zip(self.views(flat), tensors):
                view.copy_(t)
