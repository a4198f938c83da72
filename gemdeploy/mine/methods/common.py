"""Helpers shared by the baseline methods: exact per-layer budgets, per-layer top-k, random masks.

Every baseline returns a mask whose total kept count is exactly ``keep_count(total, density)`` and that
keeps at least one weight in every prunable layer (no layer collapse), whatever its scores say.
"""

from __future__ import annotations

import torch
from torch import nn

from gemdeploy.sparsity.masks import Mask, keep_count, prunable_weights


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
