"""GraSP (Wang et al., 2020): keep the weights whose removal least reduces gradient flow.

Score ``w * (H g)`` with g the (temperature-scaled) loss gradient and H the Hessian, computed as the gradient of
``g_stopped . g``; the highest scores are kept (Synaptic-Flow's sign convention).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from gemdeploy.mine.methods.score_at_init import SAMPLES_PER_CLASS, ScoreAtInit, scoring_batch
from gemdeploy.sparsity.masks import prunable_weights

TEMPERATURE = 200.0


class Grasp(ScoreAtInit):
    name = "grasp"
    tie_stream = "grasp-ties"
    scoring = (f"w * Hg (temperature {TEMPERATURE:g}) in eval mode on {SAMPLES_PER_CLASS} training examples per "
               "class (Synaptic-Flow)")

    def score(self, ctx, model, mask):
        model.eval()
        weights = prunable_weights(model)
        params = list(weights.values())
        x, y = scoring_batch(ctx)
        stopped = [g.detach() for g in torch.autograd.grad(F.cross_entropy(model(x) / TEMPERATURE, y), params)]
        model.zero_grad(set_to_none=True)
        grads = torch.autograd.grad(F.cross_entropy(model(x) / TEMPERATURE, y), params, create_graph=True)
        sum((s * g).sum() for s, g in zip(stopped, grads)).backward()
        return {k: (w.grad * w).detach() for k, w in weights.items()}
