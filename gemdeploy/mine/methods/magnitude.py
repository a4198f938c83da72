"""Magnitude pruning at initialization: keep the globally largest |w| of the initial weights."""

from gemdeploy.mine.methods.score_at_init import ScoreAtInit
from gemdeploy.sparsity.masks import prunable_weights


class MagnitudeAtInit(ScoreAtInit):
    name = "magnitude"
    tie_stream = "magnitude-ties"
    scoring = "|w| of the initial weights"

    def score(self, ctx, model, mask):
        return {k: w.detach().abs() for k, w in prunable_weights(model).items()}
