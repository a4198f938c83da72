"""How reproducible a network's fp32 logits are: the floor under which no check of a compaction or an export can
tell a change from rounding.

A deep network evaluated with BatchNorm running statistics from a few batches (one epoch on 32 images) is not
normalized in eval mode: its activations grow block after block and it amplifies any change, a rounding step
included (an efficientnet_v2_l mined that way moves its logits by 144 of 333 when its input moves by one fp32
step). Every check that compares two fp32 computations of it, however exact, then fails; these say why instead
of blaming the compaction or the exporter.
"""

from __future__ import annotations

import torch
from torch import nn

FP32_STEP = 2.0 ** -23  # one rounding step of fp32, relative


def rounding_sensitivity(model: nn.Module, images: torch.Tensor, batch_size: int = 256) -> float:
    """Max |logit change| of ``model`` (eval mode) when every input value moves by one fp32 rounding step."""
    device = next(model.parameters()).device
    worst = 0.0
    with torch.no_grad():
        for i in range(0, len(images), batch_size):
            x = images[i:i + batch_size].float().to(device)
            change = (model(x * (1 + FP32_STEP)) - model(x)).abs().max()
            worst = max(worst, float(change))
    return worst


def unreproducible(sensitivity: float, scale: float) -> str:
    """The reason a check failed when ``sensitivity`` is over its tolerance (one line, no trailing period)."""
    return (f"the network's own logits move by {sensitivity:.3g} (of {scale:.3g}) when its input moves by one fp32 "
            "rounding step, so no fp32 computation of it can be checked against another: a network this sensitive "
            "is usually barely trained (BatchNorm statistics from a few batches); train it longer")
