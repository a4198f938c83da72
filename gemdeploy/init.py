"""Weight initialization schemes applied to a freshly built model."""

from __future__ import annotations

import math

import torch
from torch import nn

from gemdeploy.errors import unknown_choice
from gemdeploy.masks import PRUNABLE_TYPES

INITS = ("signed-constant", "kaiming-normal")
RELU_GAIN = math.sqrt(2.0)


def _fan_in(w: torch.Tensor) -> int:
    return w.shape[1] * (w[0][0].numel() if w.dim() > 2 else 1)


@torch.no_grad()
def initialize(model: nn.Module, scheme: str) -> nn.Module:
    """Signed constant (Gem-Miner, edge-popup): sign of the default init times gain/sqrt(fan_in)."""
    if scheme not in INITS:
        raise unknown_choice("init", scheme, INITS)
    for m in model.modules():
        if not isinstance(m, PRUNABLE_TYPES):
            continue
        std = RELU_GAIN / math.sqrt(_fan_in(m.weight))
        if scheme == "signed-constant":
            sign = torch.where(m.weight >= 0, 1.0, -1.0)
            m.weight.copy_(sign * std)
        else:
            nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
        if m.bias is not None:
            m.bias.zero_()
    return model
