"""Magnitude pruning at initialization: keep the globally largest |w| of the initial weights.

With the signed-constant init every weight of a layer has the same magnitude, so this keeps whole
layers with small fan-in first; ties inside a layer are broken at random (seeded).
"""

import torch

from gemdeploy.masks import prunable_weights
from gemdeploy.miners.base import METHODS, Method, Ticket
from gemdeploy.miners.common import global_mask


@METHODS.register("magnitude")
class MagnitudeAtInit(Method):
    name = "magnitude"
    has_scores = True

    def find_ticket(self, ctx) -> Ticket:
        scores = {k: w.detach().abs().cpu() for k, w in prunable_weights(ctx.fresh_model()).items()}
        mask = global_mask(scores, ctx.config.density, torch.Generator().manual_seed(ctx.config.seed + 13))
        return Ticket(mask, scores)
