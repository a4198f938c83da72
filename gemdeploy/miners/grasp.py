"""GraSP (Wang et al., 2020): keep the weights whose removal least reduces gradient flow.

Score ``w * (H g)`` with g the (temperature-scaled) loss gradient and H the Hessian, computed as the
gradient of ``g_stopped . g``; the highest scores are kept (pruning the top of ``-w * Hg``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from gemdeploy.masks import prunable_weights
from gemdeploy.miners.base import METHODS, Method, Ticket
from gemdeploy.miners.common import global_mask
from gemdeploy.miners.snip import score_batches

TEMPERATURE = 200.0


@METHODS.register("grasp")
class Grasp(Method):
    name = "grasp"
    has_scores = True

    def find_ticket(self, ctx) -> Ticket:
        model = ctx.fresh_model()
        model.train()
        weights = prunable_weights(model)
        params = list(weights.values())
        batches = list(score_batches(ctx))
        stopped = [torch.zeros_like(p) for p in params]
        for x, y in batches:
            grads = torch.autograd.grad(F.cross_entropy(model(x) / TEMPERATURE, y), params)
            stopped = [s + g.detach() for s, g in zip(stopped, grads)]
        model.zero_grad(set_to_none=True)
        for x, y in batches:
            grads = torch.autograd.grad(F.cross_entropy(model(x) / TEMPERATURE, y), params, create_graph=True)
            sum((s * g).sum() for s, g in zip(stopped, grads)).backward()
        scores = {k: (w.grad * w).detach().cpu() for k, w in weights.items()}
        mask = global_mask(scores, ctx.config.density, torch.Generator().manual_seed(ctx.config.seed + 19))
        return Ticket(mask, scores)
