"""Smart-Ratio (Su et al., 2020, "Sanity-checking pruning methods: random tickets can win the jackpot").

Random masks with hand-made layer-wise keep ratios: layer l of L (in forward order) gets a ratio
proportional to (L - l + 1)^2 + (L - l + 1), so early layers keep more; the classifier keeps a fixed
30% (at most half of the whole budget). The proportionality constant is solved so the total is exact.
"""

from __future__ import annotations

from gemdeploy.train.seeds import generator

from gemdeploy.sparsity.masks import keep_count, prunable_weights
from gemdeploy.mine.methods.base import Method, Ticket
from gemdeploy.mine.methods.common import allocate_counts, per_layer_topk, random_scores, sizes_of

LAST_LAYER_RATIO = 0.3


def smart_ratios(sizes: dict[str, int], density: float) -> dict[str, float]:
    names = list(sizes)
    budget = keep_count(sum(sizes.values()), density)
    last = names[-1]
    last_keep = min(LAST_LAYER_RATIO * sizes[last], 0.5 * budget)
    rest = names[:-1]
    if not rest:
        return {last: density}
    n = len(rest) + 1
    raw = {k: float((n - i) ** 2 + (n - i)) for i, k in enumerate(rest)}
    target = budget - last_keep

    def kept(c: float) -> float:
        return sum(min(1.0, c * raw[k]) * sizes[k] for k in rest)

    lo, hi = 0.0, 1.0
    while kept(hi) < target and hi < 1e12:
        hi *= 2
    for _ in range(100):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if kept(mid) < target else (lo, mid)
    ratios = {k: min(1.0, hi * raw[k]) for k in rest}
    ratios[last] = last_keep / sizes[last]
    return ratios


class SmartRatio(Method):
    name = "smart-ratio"

    def find_ticket(self, ctx) -> Ticket:
        weights = prunable_weights(ctx.fresh_model())
        sizes = sizes_of(weights)
        ratios = smart_ratios(sizes, ctx.config.density)
        counts = allocate_counts(sizes, ratios, keep_count(sum(sizes.values()), ctx.config.density))
        gen = generator(ctx.config.seed, "smart-ratio-mask")
        mask = per_layer_topk(random_scores(weights, gen), counts)
        return Ticket(mask.cpu(), info={"layer_ratios": ratios})
