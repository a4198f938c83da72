"""The one global selection every method uses: keep the highest scores pooled over all layers."""

from __future__ import annotations

import math

import torch

from gemdeploy.sparsity.masks import Mask, set_flat_


def break_ties(s: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """``s`` plus a relative perturbation far below any real score difference, so exact ties (a signed-constant
    init gives every weight of a layer the same magnitude) are broken at random rather than by position."""
    scale = s.abs().clamp_min(torch.finfo(torch.float32).tiny)
    return s + scale * 1e-6 * torch.rand(s.shape, generator=generator)


def global_topk(scores: dict[str, torch.Tensor], keep: int, *, eligible: dict[str, torch.Tensor] | None = None,
                generator: torch.Generator | None = None, min_per_layer: int = 1) -> Mask:
    """Keep the ``keep`` highest scores pooled over all layers.

    ``eligible`` restricts the choice to entries that are still 1 (nothing ineligible is ever revived); every layer
    keeps at least ``min_per_layer`` of its eligible entries so that no layer collapses and the network stays
    connected. With a ``generator``, exact ties are broken at random; without, by position.
    """
    names = list(scores)
    flat = []
    for k in names:
        s = scores[k].detach().float().flatten()
        if generator is not None:
            s = break_ties(s.cpu(), generator).to(s.device)
        if eligible is not None:
            s = torch.where(eligible[k].to(s.device).flatten() > 0, s, torch.full_like(s, -math.inf))
        flat.append(s)
    mask = Mask({k: torch.zeros_like(scores[k], dtype=torch.float32) for k in names})
    # Reserve each layer's best few first, then fill the rest globally.
    reserved = []
    for k, s in zip(names, flat):
        n = min(min_per_layer, int(torch.isfinite(s).sum()))
        if n:
            top = torch.topk(s, n).indices
            set_flat_(mask[k], top)
            s = s.clone()
            s[top] = -math.inf
        reserved.append(s)
    remaining = keep - mask.num_kept()
    if remaining > 0:
        pooled = torch.cat(reserved)
        remaining = min(remaining, int(torch.isfinite(pooled).sum()))
        top = torch.topk(pooled, remaining, sorted=False).indices
        offset = 0
        for k, s in zip(names, reserved):
            sel = top[(top >= offset) & (top < offset + s.numel())] - offset
            set_flat_(mask[k], sel)
            offset += s.numel()
    return mask
