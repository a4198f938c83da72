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


_NEG = -(1 << 31)  # below every key: ineligible and already-reserved entries


def _order_keys(s: torch.Tensor) -> torch.Tensor:
    """int32 keys that order as the float32 scores do (same shape and memory layout); NaN and -inf rank lowest."""
    bits = torch.nan_to_num(s.float(), nan=-math.inf).view(torch.int32)
    keys = torch.where(bits < 0, bits ^ 0x7FFFFFFF, bits)  # negative floats: larger magnitude, smaller key
    return keys.masked_fill_(keys <= -0x7F800001, _NEG)  # -inf (key -2139095041 after the flip) joins _NEG


def global_topk(scores: dict[str, torch.Tensor], keep: int, *, eligible: dict[str, torch.Tensor] | None = None,
                generator: torch.Generator | None = None, min_per_layer: int = 1) -> Mask:
    """Keep the ``keep`` highest scores pooled over all layers.

    ``eligible`` restricts the choice to entries that are still 1 (nothing ineligible is ever revived); every layer
    keeps at least ``min_per_layer`` of its eligible entries so that no layer collapses and the network stays
    connected. With a ``generator``, exact ties are broken at random; without, by position (row-major, layer order).

    The pooled threshold is found by bisection over the scores' order-preserving int32 keys (32 counting passes)
    rather than by a top-k of every score: a top-k of N entries holds several N-sized buffers (values, int64
    indices, the pooled copy), which set the peak memory of mining a large network.
    """
    names = list(scores)
    keys = {}
    for k in names:
        s = scores[k].detach().float()
        if generator is not None:
            s = break_ties(s.cpu(), generator).to(s.device)
        key = _order_keys(s)
        if eligible is not None:
            key.masked_fill_(eligible[k].to(key.device).reshape(key.shape) <= 0, _NEG)
        keys[k] = key
    mask = Mask({k: torch.zeros_like(scores[k], dtype=torch.float32) for k in names})
    # Reserve each layer's best few first, then fill the rest globally.
    for k in names:
        n = min(min_per_layer, int((keys[k] > _NEG).sum()))
        if n:
            # argmax for the usual one: a CPU top-k holds a (value, index) pair per entry of the layer
            top = torch.argmax(keys[k]).reshape(1) if n == 1 else torch.topk(keys[k].flatten(), n).indices
            set_flat_(mask[k], top)
            set_flat_(keys[k], top, _NEG)
    remaining = min(keep - mask.num_kept(), sum(int((key > _NEG).sum()) for key in keys.values()))
    if remaining <= 0:
        return mask

    def count(at_least: int) -> int:
        return sum(int((key >= at_least).sum()) for key in keys.values())

    lo, hi = _NEG + 1, max(int(key.max()) for key in keys.values())
    while lo < hi:  # the highest threshold that still keeps `remaining`
        mid = (lo + hi + 1) // 2
        if count(mid) >= remaining:
            lo = mid
        else:
            hi = mid - 1
    ties = remaining - count(lo + 1)  # entries at the threshold itself, taken by position
    for k in names:
        above = keys[k] > lo
        mask[k].masked_fill_(above, 1.0)
        if ties > 0:
            at = torch.nonzero((keys[k] == lo).flatten()).flatten()[:ties]
            set_flat_(mask[k], at)
            ties -= at.numel()
    return mask
