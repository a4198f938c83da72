"""How reproducible a network's logits are: the floor under which no check of a compaction or an export can tell a
change from rounding.

A deep network evaluated with BatchNorm running statistics from a few batches (one epoch on 32 images) is not
normalized in eval mode: its activations grow block after block and it amplifies any change, a rounding step
included (an efficientnet_v2_l mined that way moves its logits by 144 of 333 when its input moves by one fp32
step). Every check that compares two fp32 computations of it, however exact, then fails; these say why instead
of blaming the compaction or the exporter.
"""

from __future__ import annotations

import contextlib
import math

import torch
from torch import nn

EXPLAINS_UP_TO = 10.0  # a difference over 10x what one rounding step of the input does is not put down to rounding


@contextlib.contextmanager
def _exact_float32():
    """No TF32 on CUDA while measuring: it rounds inputs to a 10-bit mantissa, which hides a one-step change."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def rounding_sensitivity(model: nn.Module, images: torch.Tensor, batch_size: int = 256) -> float:
    """Max |logit change| of ``model`` in eval mode when every input value moves by one rounding step of the model's
    dtype, each up or down at random (one direction for all would only rescale a bias-free ReLU network)."""
    param = next(model.parameters())
    gen = torch.Generator().manual_seed(0)
    was_training, worst = model.training, 0.0
    model.eval()
    try:
        with torch.no_grad(), _exact_float32():
            for i in range(0, len(images), batch_size):
                x = images[i:i + batch_size].to(param.dtype)
                away = torch.where(torch.rand(x.shape, generator=gen) < 0.5, -math.inf, math.inf).to(x.dtype)
                x, moved = x.to(param.device), torch.nextafter(x, away).to(param.device)
                worst = max(worst, float((model(moved) - model(x)).abs().max()))
    finally:
        model.train(was_training)
    return worst


def explained_by_rounding(diff: float, tolerance: float, sensitivity: float) -> bool:
    """Whether a check's failure (``diff`` over ``tolerance``) is the network's own rounding at work: one rounding step
    of its input already moves its logits past the tolerance, and the difference is of that order."""
    return math.isfinite(diff) and sensitivity > tolerance and diff <= EXPLAINS_UP_TO * sensitivity


def unreproducible(sensitivity: float, scale: float) -> str:
    """The reason a check failed when `explained_by_rounding` (one clause, no trailing period)."""
    return (f"the network's own logits move by {sensitivity:.3g} (of {scale:.3g}) when its input moves by one "
            "rounding step, so no computation of it can be checked against another: a network this sensitive is "
            "usually barely trained (BatchNorm statistics from a few batches); train it longer")
