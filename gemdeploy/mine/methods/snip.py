"""SNIP (Lee et al., 2019): keep the weights with the largest connection sensitivity |w * dL/dw| at init."""

from __future__ import annotations

import torch.nn.functional as F

from gemdeploy.mine.methods.score_at_init import SAMPLES_PER_CLASS, ScoreAtInit, scoring_batch
from gemdeploy.sparsity.masks import prunable_weights


class Snip(ScoreAtInit):
    name = "snip"
    tie_stream = "snip-ties"
    scoring = f"|w * dL/dw| in eval mode on {SAMPLES_PER_CLASS} training examples per class (Synaptic-Flow)"

    def score(self, ctx, model, mask):
        model.eval()
        weights = prunable_weights(model)
        model.zero_grad(set_to_none=True)
        x, y = scoring_batch(ctx)
        F.cross_entropy(model(x), y).backward()
        return {k: (w.grad * w).detach().abs() for k, w in weights.items()}
