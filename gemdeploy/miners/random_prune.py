"""Random pruning at initialization: the same density in every layer, positions uniformly at random."""

import torch

from gemdeploy.miners.base import METHODS, Method, Ticket
from gemdeploy.miners.common import per_layer_topk, random_scores, sizes_of, uniform_counts
from gemdeploy.masks import prunable_weights


@METHODS.register("random")
class RandomPruning(Method):
    name = "random"

    def find_ticket(self, ctx) -> Ticket:
        weights = prunable_weights(ctx.fresh_model())
        gen = torch.Generator().manual_seed(ctx.config.seed + 11)
        mask = per_layer_topk(random_scores(weights, gen), uniform_counts(sizes_of(weights), ctx.config.density))
        return Ticket(mask.cpu())
