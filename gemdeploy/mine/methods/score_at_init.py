"""What the pruning-at-initialization methods share: score the weights of the initial network, keep the highest
scores globally (gemdeploy.sparsity.topk), optionally over several iterations on an exponential schedule.

A method supplies only `score(ctx, model, mask)`; SNIP and GraSP score on one batch of 10 training examples per
class (augmented, as Synaptic-Flow samples them) with the network in eval mode, as Synaptic-Flow's `prune_loop`
does; SynFlow reads no data at all.
"""

from __future__ import annotations

import torch

from gemdeploy.mine.context import RunContext
from gemdeploy.mine.methods.base import Method, Ticket
from gemdeploy.sparsity.masks import Mask, keep_count
from gemdeploy.sparsity.topk import global_topk
from gemdeploy.train.seeds import generator, seed_for

SAMPLES_PER_CLASS = 10  # Synaptic-Flow's prune_dataset_ratio


def scoring_batch(ctx: RunContext) -> tuple[torch.Tensor, torch.Tensor]:
    """``SAMPLES_PER_CLASS`` x classes random training examples, augmented like training batches."""
    n = SAMPLES_PER_CLASS * ctx.data.num_classes
    seed = seed_for(ctx.config.seed, "scoring-data")
    return next(iter(ctx.data.train.batches(n, epoch=0, train=True, seed=seed)))


class ScoreAtInit(Method):
    has_scores = True
    iterations = 1  # > 1: prune to density^(k / iterations) at iteration k, never reviving a pruned weight
    tie_stream = ""  # random stream that breaks exact score ties
    scoring = ""  # one line for ticket.json: what was scored, on what

    def score(self, ctx: RunContext, model: torch.nn.Module, mask: Mask) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def find_ticket(self, ctx: RunContext) -> Ticket:
        model = ctx.fresh_model()
        gen = generator(ctx.config.seed, self.tie_stream)
        mask = Mask.ones_like(model).cpu()
        total = mask.num_total()
        scores: dict[str, torch.Tensor] = {}
        for k in range(1, self.iterations + 1):
            scores = {n: s.detach().float().cpu() for n, s in self.score(ctx, model, mask).items()}
            keep = keep_count(total, ctx.config.density ** (k / self.iterations))
            mask = global_topk(scores, keep, eligible=mask if self.iterations > 1 else None, generator=gen)
        return Ticket(mask, scores, {"iterations": self.iterations, "scoring": self.scoring, "training_epochs": 0})
