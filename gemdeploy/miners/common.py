"""Helpers shared by the baseline methods: exact per-layer budgets, per-layer top-k, random masks.

Every baseline returns a mask whose total kept count is exactly ``keep_count(total, density)`` and that
keeps at least one weight in every prunable layer (no layer collapse), whatever its scores say.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from gemdeploy.masks import Mask, keep_count, prunable_weights


def sizes_of(model_or_tensors) -> dict[str, int]:
    tensors = prunable_weights(model_or_tensors) if isinstance(model_or_tensors, nn.Module) else model_or_tensors
    return {k: int(w.numel()) for k, w in tensors.items()}


def allocate_counts(sizes: dict[str, int], ratios: dict[str, float], keep: int) -> dict[str, int]:
    """Per-layer kept counts close to ``ratio * size`` that sum to exactly ``keep``.

    Each layer keeps at least one weight and at most all of them; the rounding remainder goes to the
    layers with the largest fractional parts (then the largest layers), so the total is exact.
    """
    names = list(sizes)
    keep = max(len(names), min(keep, sum(sizes.values())))
    want = {k: min(sizes[k], max(1.0, ratios[k] * sizes[k])) for k in names}
    counts = {k: int(want[k]) for k in names}
    diff = keep - sum(counts.values())
    if diff > 0:
        order = sorted(names, key=lambda k: (-(want[k] - counts[k]), -sizes[k]))
        while diff > 0:
            progressed = False
            for k in order:
                if diff and counts[k] < sizes[k]:
                    counts[k] += 1
                    diff -= 1
                    progressed = True
            if not progressed:
                break
    elif diff < 0:
        order = sorted(names, key=lambda k: (want[k] - counts[k], -sizes[k]))
        while diff < 0:
            for k in order:
                if diff and counts[k] > 1:
                    counts[k] -= 1
                    diff += 1
    return counts


def uniform_counts(sizes: dict[str, int], density: float) -> dict[str, int]:
    """The same density in every layer, with an exact total."""
    return allocate_counts(sizes, {k: density for k in sizes}, keep_count(sum(sizes.values()), density))


def per_layer_topk(scores: dict[str, torch.Tensor], counts: dict[str, int]) -> Mask:
    mask = Mask()
    for k, s in scores.items():
        flat = torch.zeros(s.numel(), dtype=torch.float32, device=s.device)
        flat[torch.topk(s.detach().float().flatten(), counts[k], sorted=False).indices] = 1.0
        mask[k] = flat.view_as(s)
    return mask


def random_scores(shapes: dict[str, torch.Tensor], generator: torch.Generator) -> dict[str, torch.Tensor]:
    return {k: torch.rand(tuple(w.shape), generator=generator) for k, w in shapes.items()}


def global_mask(scores: dict[str, torch.Tensor], density: float, generator: torch.Generator | None = None,
                eligible: dict[str, torch.Tensor] | None = None) -> Mask:
    """Global top-k of ``scores`` at ``density`` (every layer keeps >= 1).

    With a generator, exact ties (a signed-constant init gives every weight of a layer the same magnitude)
    are broken at random rather than by position.
    """
    names = list(scores)
    total = sum(s.numel() for s in scores.values())
    keep = keep_count(total, density)
    flat = []
    for k in names:
        s = scores[k].detach().float().cpu().flatten()
        if generator is not None:
            s = _break_ties(s, generator)
        if eligible is not None:
            s = torch.where(eligible[k].cpu().flatten() > 0, s, torch.full_like(s, -math.inf))
        flat.append(s)
    # Each layer's best entry first (no layer collapse), then the rest by one global sort.
    reserved = []
    for s in flat:
        s = s.clone()
        best = int(torch.argmax(s))
        s[best] = math.inf
        reserved.append(s)
    order = torch.argsort(torch.cat(reserved), descending=True, stable=True)[:keep]
    chosen = torch.zeros(total, dtype=torch.float32)
    chosen[order] = 1.0
    chosen[torch.isneginf(torch.cat(reserved))] = 0.0  # never revive an ineligible weight
    out, offset = Mask(), 0
    for k in names:
        n = scores[k].numel()
        out[k] = chosen[offset:offset + n].view(tuple(scores[k].shape)).clone()
        offset += n
    return out


def _break_ties(s: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    # A relative perturbation far below any real score difference; zero scores stay zero-ish and finite.
    scale = s.abs().clamp_min(torch.finfo(torch.float32).tiny)
    return s + scale * 1e-6 * torch.rand(s.shape, generator=generator)
