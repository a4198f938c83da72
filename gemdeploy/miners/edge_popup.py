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

from gemdeploy.context import Checkpoint, PhaseTimer, RunContext
from gemdeploy.masks import Mask, prunable_weights
from gemdeploy.miners.base import METHODS, Method, Ticket
from gemdeploy.miners.common import per_layer_topk, sizes_of, uniform_counts
from gemdeploy.training import (cosine_lr, evaluate, load_momentum_buffers, momentum_buffers, set_lr, sgd,
                                train_epoch)


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


@METHODS.register("edge-popup")
class EdgePopup(Method):
    name = "edge-popup"
    has_scores = True

    def find_ticket(self, ctx: RunContext) -> Ticket:
        cfg, hw = ctx.config, ctx.hw
        net = ctx.fresh_model()
        counts = uniform_counts(sizes_of(net), cfg.density)
        scored = TopKNetwork(net, counts, torch.Generator().manual_seed(cfg.seed + 29))
        names = {id(s): f"scores.{i}" for i, s in enumerate(scored.scores)}
        optimizer = sgd(scored.scores, cfg.lr, cfg.momentum, 0.0)
        start, timer = 0, PhaseTimer()
        ckpt = ctx.load_checkpoint("mine")
        if ckpt is not None:
            scored.load_state_dict({k: v for k, v in ckpt.tensors.items() if not k.startswith("momentum.")})
            load_momentum_buffers(optimizer, names, {k[len("momentum."):]: v for k, v in ckpt.tensors.items()
                                                     if k.startswith("momentum.")})
            start, timer = ckpt.epoch, PhaseTimer(ckpt.elapsed)
        ctx.reporter.start("mine", cfg.epochs, start)
        for epoch in range(start, cfg.epochs):
            set_lr(optimizer, cosine_lr(cfg.lr, epoch, cfg.epochs))
            scored.train()
            stats = train_epoch(scored, optimizer, ctx.data.train, hw, epoch=epoch, seed=cfg.seed,
                                batch_size=cfg.batch_size)
            scored.eval()
            val = evaluate(scored, ctx.data.val, hw)
            ctx.log({"phase": "mine", "epoch": epoch + 1, "lr": optimizer.param_groups[0]["lr"], "loss": stats.loss,
                     "train_acc": stats.acc, "val_acc": val.acc, "val_loss": val.loss, "density": cfg.density,
                     "images_per_s": stats.images_per_s, "time_s": timer.elapsed()})
            tensors = dict(scored.state_dict())
            tensors.update({f"momentum.{k}": v for k, v in momentum_buffers(optimizer, names).items()})
            ctx.save_checkpoint("mine", Checkpoint(epoch + 1, timer.elapsed(), tensors))
            ctx.reporter.update(loss=stats.loss, acc=val.acc, density=cfg.density)
        mask = scored.mask().cpu()
        scores = {k: s.detach().abs().cpu() for k, s in zip(scored.names, scored.scores)}
        return Ticket(mask, scores, {"mining_seconds": timer.elapsed()})
