"""SNIP (Lee et al., 2019): keep the weights with the largest connection sensitivity |w * dL/dw| at init.

Gradients are summed over a few training batches (``SCORE_BATCHES`` of ``--batch-size``); one global top-k.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from gemdeploy.masks import prunable_weights
from gemdeploy.miners.base import METHODS, Method, Ticket
from gemdeploy.miners.common import global_mask

SCORE_BATCHES = 4


def score_batches(ctx, n: int = SCORE_BATCHES):
    """The first ``n`` batches of the training split, in order and without augmentation."""
    for i, batch in enumerate(ctx.data.train.batches(ctx.config.batch_size, epoch=0, train=False, seed=ctx.config.seed)):
        if i >= n:
            break
        yield batch


@METHODS.register("snip")
class Snip(Method):
    name = "snip"
    has_scores = True

    def find_ticket(self, ctx) -> Ticket:
        model = ctx.fresh_model()
        model.train()
        weights = prunable_weights(model)
        model.zero_grad(set_to_none=True)
        for x, y in score_batches(ctx):
            F.cross_entropy(model(x), y).backward()
        scores = {k: (w.grad * w).detach().abs().cpu() for k, w in weights.items()}
        mask = global_mask(scores, ctx.config.density, torch.Generator().manual_seed(ctx.config.seed + 17))
        return Ticket(mask, scores)
