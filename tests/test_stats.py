"""Accuracy intervals (gemdeploy.stats) against values computed independently: scipy's Wilson interval, the
published examples of Newcombe (1998), the square-and-add formula from scipy's intervals and numpy's correlation,
and the coverage the intervals promise on simulated paired outcomes."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sps

from gemdeploy import stats


@pytest.mark.parametrize("k,n", [(0, 64), (1, 64), (32, 64), (64, 64), (912, 1000), (3, 7)])
def test_wilson_interval_matches_scipy(k, n):
    expected = sps.binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
    low, high = stats.wilson_interval(k, n)
    assert low == pytest.approx(expected.low, abs=1e-9) and high == pytest.approx(expected.high, abs=1e-9)


@pytest.mark.parametrize("counts,published", [
    ((56, 70, 48, 80), (0.0524, 0.3339)),  # Newcombe (1998), Stat. Med. 17:873, example (a), method 10
    ((9, 10, 3, 10), (0.1705, 0.8090)),    # example (b)
])
def test_unpaired_difference_matches_newcombes_published_examples(counts, published):
    diff = stats.unpaired_difference(*counts)
    assert (round(diff.low, 4), round(diff.high, 4)) == published
    assert not diff.paired


def _square_and_add_from_scipy(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """Newcombe's paired interval written out here from scipy's Wilson intervals and numpy's phi coefficient."""
    n = len(a)
    p1, p2 = a.mean(), b.mean()
    c1 = sps.binomtest(int(a.sum()), n).proportion_ci(method="wilson")
    c2 = sps.binomtest(int(b.sum()), n).proportion_ci(method="wilson")
    phi = 0.0 if a.std() == 0 or b.std() == 0 else float(np.corrcoef(a, b)[0, 1])
    d1, e1 = p1 - c1.low, c1.high - p1
    d2, e2 = p2 - c2.low, c2.high - p2
    return (p1 - p2 - math.sqrt(d1 ** 2 - 2 * phi * d1 * e2 + e2 ** 2),
            p1 - p2 + math.sqrt(e1 ** 2 - 2 * phi * e1 * d2 + d2 ** 2))


@pytest.mark.parametrize("seed,n,acc,flip", [(0, 64, 0.5, 0.1), (1, 500, 0.9, 0.05), (2, 1000, 0.97, 0.01),
                                             (3, 40, 0.3, 0.4)])
def test_paired_difference_is_newcombes_square_and_add(seed, n, acc, flip):
    rng = np.random.default_rng(seed)
    a = rng.random(n) < acc
    b = a.copy()
    flips = rng.random(n) < flip
    b[flips] = ~b[flips]
    diff = stats.paired_difference(a, b)
    low, high = _square_and_add_from_scipy(a.astype(float), b.astype(float))
    assert diff.delta == pytest.approx(a.mean() - b.mean())
    assert (diff.low, diff.high) == (pytest.approx(low, abs=1e-9), pytest.approx(high, abs=1e-9))
    assert diff.paired and diff.n == n
    # Paired is narrower than treating the same outcomes as independent samples (they are positively correlated).
    unpaired = stats.unpaired_difference(int(a.sum()), n, int(b.sum()), n)
    assert diff.high - diff.low < unpaired.high - unpaired.low


def test_paired_interval_covers_the_true_difference_95_percent_of_the_time():
    rng = np.random.default_rng(7)
    n, trials = 200, 1500
    # Cells of the true 2x2 table: both right, only a, only b, both wrong -> true difference 0.03.
    probs = np.array([0.80, 0.05, 0.02, 0.13])
    covered = 0
    for _ in range(trials):
        cell = rng.choice(4, size=n, p=probs)
        a, b = np.isin(cell, (0, 1)), np.isin(cell, (0, 2))
        d = stats.paired_difference(a, b)
        covered += d.low <= 0.03 <= d.high
    assert 0.93 <= covered / trials <= 0.985


def test_identical_zero_accuracies_are_too_few_images_to_tell():
    # The case: 0.00% vs 0.00% on 64 images is no evidence of "no cost".
    zeros = np.zeros(64, dtype=bool)
    diff = stats.paired_difference(zeros, zeros)
    high0 = sps.binomtest(0, 64).proportion_ci(method="wilson").high
    assert diff.delta == 0 and diff.low == pytest.approx(-high0) and diff.high == pytest.approx(high0)
    assert stats.judge(diff) == "too small to tell"
    # Wilson's upper limit of 0/N is z^2 / (N + z^2): it reaches 1 point at N = 99 z^2.
    z = sps.norm.ppf(0.975)
    assert stats.images_needed(zeros, zeros) == math.ceil(99 * z * z)


def test_images_needed_is_the_first_count_whose_interval_is_one_point():
    rng = np.random.default_rng(3)
    a = rng.random(300) < 0.85
    b = a.copy()
    b[:30] = ~b[:30]
    need = stats.images_needed(a, b)
    assert need > 300  # 300 images do not resolve 1 point here

    def half(m):  # the same proportions at m images
        reps = [np.repeat(x, m // 300) for x in (a, b)]
        return stats.paired_difference(*reps).half_width

    assert half(300 * math.ceil(need / 300)) <= 0.01 < half(300 * (need // 300))


def test_images_to_decide_is_the_first_count_at_which_judge_decides():
    """Not the count for a 1-point-wide interval: the count at which the interval leaves the 1-point line, which
    is fewer for a difference far from it and none for one sitting on it."""
    rng = np.random.default_rng(4)
    a = rng.random(300) < 0.85
    b = a.copy()
    b[:12] = ~b[:12]
    need = stats.images_to_decide(a, b)

    def verdict(m):  # the same outcomes repeated: the same proportions at m images
        return stats.judge(stats.paired_difference(*[np.repeat(x, m // 300) for x in (a, b)]))

    assert stats.judge(stats.paired_difference(a, b)) == "too small to tell" and need > 300
    assert verdict(300 * math.ceil(need / 300)) != "too small to tell" == verdict(300 * (need // 300))
    assert need != stats.images_needed(a, b)
    # Unpaired, from two accuracies: on the line, no count decides; 0.5 point from it, a count that does.
    assert stats.images_to_decide_unpaired(0.93, 0.94) is None
    m = stats.images_to_decide_unpaired(0.935, 0.94)
    assert stats.judge(stats.unpaired_difference(0.935 * m, m, 0.94 * m, m)) == "within"
    assert stats.judge(stats.unpaired_difference(0.935 * (m - 1), m - 1, 0.94 * (m - 1), m - 1)) == "too small to tell"


def test_judge_reads_the_interval_against_one_point():
    assert stats.judge(stats.Difference(-0.002, -0.008, 0.004, 5000, True)) == "within"
    assert stats.judge(stats.Difference(-0.05, -0.07, -0.03, 5000, True)) == "worse"
    assert stats.judge(stats.Difference(-0.005, -0.03, 0.02, 300, True)) == "too small to tell"
