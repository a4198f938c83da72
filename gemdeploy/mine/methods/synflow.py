"""SynFlow (Tanaka et al., 2020): iterative synaptic-flow pruning, data-free.

Each of ``ITERATIONS`` rounds linearizes the network (|w|, BatchNorm in eval mode), feeds an all-ones input, takes
R = sum of the outputs and scores every weight by |w * dR/dw|; the kept fraction follows the exponential schedule
density^(k / ITERATIONS). No training example is ever read: only the input shape. (Synaptic-Flow computes in
float32; float64 here keeps R finite in deep networks, the ranking is the same.)
"""

from __future__ import annotations

import torch
from torch.func import functional_call

from gemdeploy.mine.methods.score_at_init import ScoreAtInit
from gemdeploy.sparsity.masks import Mask, prunable_weights

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


class SynFlow(ScoreAtInit):
    name = "synflow"
    iterations = ITERATIONS
    tie_stream = "synflow-ties"
    scoring = f"|w * dR/dw| of the linearized network on an all-ones input, {ITERATIONS} iterations (data-free)"

    def score(self, ctx, model, mask):
        return synflow_scores(model, ctx.data.input_shape, mask)
