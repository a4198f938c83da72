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


def _storage_order(t: torch.Tensor) -> torch.Tensor:
    """A 1-D view of a dense tensor's elements in memory order (no copy, channels_last included): counting and
    sampling do not care about the order."""
    order = sorted(range(t.dim()), key=lambda d: -t.stride(d))
    return t.permute(*order).reshape(-1)


def _count(keys, at_least: int) -> int:
    return sum(int(torch.count_nonzero(key >= at_least)) for key in keys)


def _kth_highest_key(keys: list[torch.Tensor], k: int, sample_size: int = 1 << 16) -> int:
    """The ``k``-th highest of all the keys (1-based): a strided sample brackets it, two counting passes check the
    bracket, and an exact top-k runs only over the keys inside it (a few per thousand). A bracket the sample got wrong
    (scores far from independent of their position) falls back to bisection, 32 counting passes."""
    total = sum(key.numel() for key in keys)
    step = max(1, total // sample_size)
    sample = torch.cat([_storage_order(key)[::step] for key in keys]).sort(descending=True).values
    at = k / total * sample.numel()
    margin = 4.0 * math.sqrt(max(at, 1.0)) + 8
    first, last = int(at - margin), int(at + margin)  # past either end of the sample: no bound on that side
    high = int(sample[first]) if first >= 0 else max(int(key.max()) for key in keys)
    low = int(sample[last]) if last < sample.numel() else _NEG
    above = _count(keys, high + 1)
    if above < k <= _count(keys, low):  # the k-th highest lies in [low, high]
        inside = torch.cat([key[(key >= low) & (key <= high)] for key in keys])
        return int(torch.topk(inside, k - above).values.min())
    lo, hi = _NEG + 1, max(int(key.max()) for key in keys)
    while lo < hi:  # the highest key that still has k at or above it
        mid = (lo + hi + 1) // 2
        if _count(keys, mid) >= k:
            lo = mid
        else:
            hi = mid - 1
    return lo


def global_topk(scores: dict[str, torch.Tensor], keep: int, *, eligible: dict[str, torch.Tensor] | None = None,
                generator: torch.Generator | None = None, min_per_layer: int = 1) -> Mask:
    """Keep the ``keep`` highest scores pooled over all layers.

    ``eligible`` restricts the choice to entries that are still 1 (nothing ineligible is ever revived); every layer
    keeps at least ``min_per_layer`` of its eligible entries so that no layer collapses and the network stays
    connected. With a ``generator``, exact ties are broken at random; without, by position (row-major, layer order).

    The pooled threshold is selected over the scores' order-preserving int32 keys, by sampling and then counting
    (`_kth_highest_key`), rather than by a top-k of every score: a top-k of N entries holds several N-sized buffers
    (values, int64 indices, the pooled copy), which set the peak memory of mining a large network.
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

    threshold = _kth_highest_key(list(keys.values()), remaining)
    ties = remaining - _count(keys.values(), threshold + 1)  # entries at the threshold itself, taken by position
    for k in names:
        above = keys[k] > threshold
        mask[k].masked_fill_(above, 1.0)
        if ties > 0:
            at = torch.nonzero((keys[k] == threshold).flatten()).flatten()[:ties]
            set_flat_(mask[k], at)
            ties -= at.numel()
    return mask
