"""Weight initialization schemes applied to a freshly built model.

- ``signed-constant`` (Gem-Miner, edge-popup): the sign of the default init times gain / sqrt(fan_in), ReLU gain;
- ``kaiming-normal`` (IMP, SNIP, GraSP, SynFlow, ... as their references): N(0, gain^2 / fan_in), ReLU gain.
Biases start at zero in both.
"""

from __future__ import annotations

import math

INITS = ("signed-constant", "kaiming-normal")
RELU_GAIN = math.sqrt(2.0)


def _fan_in(w) -> int:
    return w.shape[1] * (w[0][0].numel() if w.dim() > 2 else 1)


def initialize(model, scheme: str):
    import torch
    from torch import nn

    from gemdeploy.errors import unknown_choice
    from gemdeploy.sparsity.masks import PRUNABLE_TYPES

    if scheme not in INITS:
        raise unknown_choice("init", scheme, INITS)
    with torch.no_grad():
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
