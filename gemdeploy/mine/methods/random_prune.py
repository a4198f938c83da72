"""Random pruning at initialization: the same density in every layer, positions uniformly at random."""

from gemdeploy.train.seeds import generator

from gemdeploy.mine.methods.base import Method, Ticket
from gemdeploy.mine.methods.common import per_layer_topk, random_scores, sizes_of, uniform_counts
from gemdeploy.sparsity.masks import prunable_weights


class RandomPruning(Method):
    name = "random"

    def find_ticket(self, ctx) -> Ticket:
        weights = prunable_weights(ctx.fresh_model())
        gen = generator(ctx.config.seed, "random-mask")
        mask = per_layer_topk(random_scores(weights, gen), uniform_counts(sizes_of(weights), ctx.config.density))
        return Ticket(mask.cpu())
