"""Edge-popup (Ramanujan et al., 2020): train one score per weight, use each layer's top-k weights.

The weights stay frozen at their initialization; every forward pass keeps, per layer, the ``density``
fraction of weights with the largest |score| (counts allocated so the total is exact), and the gradient
flows straight through to all scores. SGD on the scores (``--lr``, momentum, no weight decay, cosine
schedule, ``--epochs``). The ticket is the final per-layer top-k.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.func import functional_call

from gemdeploy.mine.context import RunContext
from gemdeploy.sparsity.masks import Mask, prunable_weights
from gemdeploy.mine.methods.base import Method, Ticket
from gemdeploy.mine.methods.common import per_layer_topk, sizes_of, uniform_counts
from gemdeploy.train.loop import cosine_lr, sgd
from gemdeploy.train.phase import Phase, run_phase
from gemdeploy.train.seeds import generator, seed_for


class _TopK(torch.autograd.Function):
    @staticmethod
    def forward(ctx, scores: torch.Tensor, k: int) -> torch.Tensor:
        out = torch.zeros_like(scores).flatten()
        out[torch.topk(scores.abs().flatten(), k, sorted=False).indices] = 1.0
        return out.view_as(scores)

    @staticmethod
    def backward(ctx, grad):
        return grad, None


class TopKNetwork(nn.Module):
    """Frozen weights, trainable scores; the forward pass uses each layer's top-k weights by |score|."""

    def __init__(self, net: nn.Module, counts: dict[str, int], generator: torch.Generator):
        super().__init__()
        self.net = net
        for p in net.parameters():
            p.requires_grad_(False)
        weights = prunable_weights(net)
        self.names = list(weights)
        self.counts = [counts[k] for k in self.names]
        self.scores = nn.ParameterList(
            [nn.Parameter(torch.rand(weights[k].shape, generator=generator).to(weights[k].device)) for k in self.names])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weights = prunable_weights(self.net)
        effective = {k: weights[k] * _TopK.apply(s, c) for k, s, c in zip(self.names, self.scores, self.counts)}
        return functional_call(self.net, effective, (x,))

    def mask(self) -> Mask:
        return per_layer_topk({k: s.detach().abs() for k, s in zip(self.names, self.scores)},
                              dict(zip(self.names, self.counts)))


class EdgePopup(Method):
    name = "edge-popup"
    has_scores = True
    default_init = "signed-constant"

    def find_ticket(self, ctx: RunContext) -> Ticket:
        cfg = ctx.config
        net = ctx.fresh_model()
        counts = uniform_counts(sizes_of(net), cfg.density)
        scored = TopKNetwork(net, counts, generator(cfg.seed, "edge-popup-scores"))
        result = run_phase(ctx, Phase(
            name="mine", epochs=cfg.epochs, module=scored, optimizer=sgd(scored.scores, cfg.lr, cfg.momentum, 0.0),
            lr=lambda e: cosine_lr(cfg.lr, e, cfg.epochs), batch_size=cfg.batch_size,
            seed=seed_for(cfg.seed, "mining-data"), density=lambda: cfg.density))
        mask = scored.mask().cpu()
        scores = {k: s.detach().abs().cpu() for k, s in zip(scored.names, scored.scores)}
        return Ticket(mask, scores, {"mining_seconds": result.seconds, "mined_val_acc": result.val.acc,
                                    "training_epochs": cfg.epochs})
