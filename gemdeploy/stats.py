"""Confidence intervals for test accuracies and their differences, and how many test images a difference needs.

A test accuracy is a binomial proportion: its interval is Wilson's score interval (right at 0% and 100%, unlike the
normal approximation). The difference of two accuracies uses Newcombe's square-and-add interval (method 10 of
his 1998 papers), built from the two Wilson intervals: for two models scored on the *same* images (bench: every run
is scored on the one test split) the per-image outcomes are paired, and the correlation between them (the phi
coefficient of the 2x2 table of right/wrong) narrows the interval; for models scored on different images it is 0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist

CONFIDENCE = 0.95
RESOLUTION = 0.01  # the difference a verdict wants to see: 1 point of accuracy


def _z(confidence: float) -> float:
    return NormalDist().inv_cdf(0.5 + confidence / 2)


def wilson_interval(correct: float, n: float, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Wilson score interval of ``correct`` successes in ``n`` trials (counts may be fractional when scaled)."""
    if n <= 0:
        return 0.0, 1.0
    z = _z(confidence)
    p = correct / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(max(0.0, p * (1 - p) / n + z * z / (4 * n * n)))
    return max(0.0, centre - half), min(1.0, centre + half)


@dataclass(frozen=True)
class Difference:
    """``a - b`` of two accuracies with its confidence interval."""

    delta: float
    low: float
    high: float
    n: int  # test images (of a, for an unpaired difference)
    paired: bool
    confidence: float = CONFIDENCE

    @property
    def half_width(self) -> float:
        return max(self.delta - self.low, self.high - self.delta)

    def as_dict(self) -> dict:
        return {"delta": self.delta, "low": self.low, "high": self.high, "n": self.n, "paired": self.paired,
                "confidence": self.confidence}


def _square_and_add(p1: float, ci1: tuple[float, float], p2: float, ci2: tuple[float, float], phi: float
                    ) -> tuple[float, float]:
    (l1, u1), (l2, u2) = ci1, ci2
    delta = p1 - p2
    lower = math.sqrt(max(0.0, (p1 - l1) ** 2 - 2 * phi * (p1 - l1) * (u2 - p2) + (u2 - p2) ** 2))
    upper = math.sqrt(max(0.0, (u1 - p1) ** 2 - 2 * phi * (u1 - p1) * (p2 - l2) + (p2 - l2) ** 2))
    return max(-1.0, delta - lower), min(1.0, delta + upper)


def paired_table(a_correct, b_correct) -> tuple[int, int, int, int]:
    """(both right, only a right, only b right, both wrong) from per-image outcomes on the same images."""
    import numpy as np

    a, b = np.asarray(a_correct, dtype=bool), np.asarray(b_correct, dtype=bool)
    if a.shape != b.shape:
        raise ValueError(f"paired outcomes need the same images: {a.shape} vs {b.shape}")
    return int((a & b).sum()), int((a & ~b).sum()), int((~a & b).sum()), int((~a & ~b).sum())


def _paired_interval(both: float, only_a: float, only_b: float, neither: float, confidence: float
                     ) -> tuple[float, float, float]:
    n = both + only_a + only_b + neither
    p1, p2 = (both + only_a) / n, (both + only_b) / n
    margins = (both + only_a) * (only_b + neither) * (both + only_b) * (only_a + neither)
    phi = (both * neither - only_a * only_b) / math.sqrt(margins) if margins > 0 else 0.0
    low, high = _square_and_add(p1, wilson_interval(both + only_a, n, confidence), p2,
                                wilson_interval(both + only_b, n, confidence), phi)
    return p1 - p2, low, high


def paired_difference(a_correct, b_correct, confidence: float = CONFIDENCE) -> Difference:
    """Accuracy of a minus accuracy of b, both scored on the same images (per-image bool outcomes, same order)."""
    table = paired_table(a_correct, b_correct)
    n = sum(table)
    if n == 0:
        return Difference(0.0, -1.0, 1.0, 0, True, confidence)
    delta, low, high = _paired_interval(*table, confidence)
    return Difference(delta, low, high, n, True, confidence)


def unpaired_difference(correct_a: int, n_a: int, correct_b: int, n_b: int, confidence: float = CONFIDENCE
                        ) -> Difference:
    """Accuracy a minus accuracy b, scored on different images (independent binomials)."""
    if n_a <= 0 or n_b <= 0:
        return Difference(0.0, -1.0, 1.0, max(0, n_a), False, confidence)
    p1, p2 = correct_a / n_a, correct_b / n_b
    low, high = _square_and_add(p1, wilson_interval(correct_a, n_a, confidence), p2,
                                wilson_interval(correct_b, n_b, confidence), 0.0)
    return Difference(p1 - p2, low, high, n_a, False, confidence)


def _first_count(ok, cap: int = 1 << 40) -> int | None:
    """The smallest image count m with ok(m), for a condition that stays true once met as images are added
    (doubling, then bisection); None when no count up to ``cap`` meets it."""
    hi = 1
    while not ok(hi):
        hi *= 2
        if hi > cap:
            return None
    lo = hi // 2
    while lo + 1 < hi:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if ok(mid) else (mid, hi)
    return hi


def _scaled_paired(a_correct, b_correct, confidence: float):
    """The paired interval of a - b at m images with the same proportions of the 2x2 table as these, as a function
    of m."""
    table = paired_table(a_correct, b_correct)
    n = sum(table)
    fractions = [c / n for c in table] if n else [0.0, 0.0, 0.0, 1.0]
    return lambda m: _paired_interval(*(f * m for f in fractions), confidence)


def _scaled_unpaired(acc_a: float, acc_b: float, confidence: float):
    def at(m: int) -> tuple[float, float, float]:
        d = unpaired_difference(acc_a * m, m, acc_b * m, m, confidence)
        return d.delta, d.low, d.high

    return at


def _decides(interval_at, threshold: float):
    def ok(m: int) -> bool:
        _, low, high = interval_at(m)
        return low >= threshold or high < threshold

    return ok


def images_needed(a_correct, b_correct, resolution: float = RESOLUTION, confidence: float = CONFIDENCE) -> int:
    """How many test images (with the same proportions of right and wrong answers as these) would make the paired
    interval of the difference no wider than ``resolution`` on either side (default: 1 point)."""
    at = _scaled_paired(a_correct, b_correct, confidence)

    def narrow_enough(m: int) -> bool:
        delta, low, high = at(m)
        return max(delta - low, high - delta) <= resolution

    return _first_count(narrow_enough) or (1 << 40)


def images_to_decide(a_correct, b_correct, threshold: float = -RESOLUTION, confidence: float = CONFIDENCE
                     ) -> int | None:
    """How many test images (same proportions as these, paired) would put the interval of a - b wholly on one side
    of ``threshold`` (default: a loss of 1 point), so that `judge` decides; None when the difference sits on the
    threshold and no count would."""
    return _first_count(_decides(_scaled_paired(a_correct, b_correct, confidence), threshold))


def images_to_decide_unpaired(acc_a: float, acc_b: float, threshold: float = -RESOLUTION,
                              confidence: float = CONFIDENCE) -> int | None:
    """images_to_decide for two accuracies known only as proportions (the pairing unknown: more images)."""
    return _first_count(_decides(_scaled_unpaired(acc_a, acc_b, confidence), threshold))


def judge(diff: Difference, resolution: float = RESOLUTION) -> str:
    """What an interval of ``a - b`` says about a cost of more than ``resolution``: 'within' (a loses at most that),
    'worse' (a loses more, for sure), or 'too small to tell' (the interval holds both)."""
    if diff.low >= -resolution:
        return "within"
    if diff.high < -resolution:
        return "worse"
    return "too small to tell"
