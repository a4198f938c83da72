"""SynFlow (Tanaka et al., 2020): iterative synaptic-flow pruning, data-free.

Each of ``ITERATIONS`` rounds linearizes the network (|w|, BatchNorm in eval mode), feeds an all-ones
input, takes R = sum of the outputs and scores every weight by |w * dR/dw|; the kept fraction follows the
exponential schedule density^(k / ITERATIONS). No training example is ever read: only the input shape.
"""

from __future__ import annotations

import torch
from torch.func import functional_call

from gemdeploy.masks import Mask, prunable_weights
from gemdeploy.miners.base import METHODS, Method, Ticket
from gemdeploy.miners.common import global_mask

ITERATIONS = 100


def synflow_scores(model: torch.nn.Module, input_shape, mask: Mask) -> dict[str, torch.Tensor]:
    """|w * dR/dw| of the linearized, masked network on one all-ones input (float64 against overflow)."""
    model = model.double().eval()
    device = next(model.parameters()).device
    params = {n: p.detach().abs().clone() for n, p in model.named_parameters()}
    names = list(prunable_weights(model))
    for k in names:
        params[k] = (params[k] * mask[k].to(device, torch.float64)).requires_grad_(True)
    ones = torch.ones((1, *input_shape), dtype=torch.float64, device=device)
    out = functional_call(model, params, (ones,))
    grads = torch.autograd.grad(out.sum(), [params[k] for k in names])
    return {k: (g * params[k]).detach().abs().float().cpu() for k, g in zip(names, grads)}


@METHODS.register("synflow")
class SynFlow(Method):
    name = "synflow"
    has_scores = True

    def find_ticket(self, ctx) -> Ticket:
        cfg = ctx.config
        model = ctx.fresh_model()
        gen = torch.Generator().manual_seed(cfg.seed + 23)
        mask = Mask.ones_like(model).cpu()
        scores = None
        for k in range(1, ITERATIONS + 1):
            scores = synflow_scores(model, ctx.data.input_shape, mask)
            mask = global_mask(scores, cfg.density ** (k / ITERATIONS), gen, eligible=mask)
        return Ticket(mask, scores, {"iterations": ITERATIONS})
