"""The decisions of `gemdeploy tune`, as pure functions of what has been measured: which patterns a set of backends
can profit from, the coarse grid, where to refine, the Pareto front and the pick.

A *candidate* is one mined ticket (pattern, sparsity, ticket learning rate); an *option* is a candidate (or the
dense model) on one backend, with its validation accuracy (chosen on it; test accuracy is reported once, for the
pick) and its latency at the asked batch size.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

# Where each pattern pays: unstructured sparsity only on a runtime that skips zeros (ONNX Runtime and PyTorch
# multiply them), 2:4 only where sparse tensor cores run it, channel removal everywhere.
SPARSE_RUNTIMES = ("sparse-cpu", "sparse-cpu-torch")
NM_RUNTIMES = ("tensorrt", "pytorch-cuda-2:4")
# Coarse grids of --sparsity (channel: the fraction of channels removed; 2:4: 0.5 is pure 2:4, more prunes on top).
GRIDS = {"channel": (0.25, 0.5, 0.75), "unstructured": (0.5, 0.8, 0.9, 0.95, 0.986), "2:4": (0.5, 0.75, 0.9)}
MIN_GAP = 0.02  # refine no finer than this between two measured sparsities
MAX_SPARSITY = 0.995
# Channel counts the kernels may prefer: exact (1), and the SIMD / tensor-core widths. Every channel candidate is
# compacted at the mine default (8); the pattern's best one is also compacted at the others and measured.
ROUNDINGS = (8, 1, 16)


def patterns_for(backends: list[str], asked: list[str] | None = None, method_patterns: tuple[str, ...] | None = None
                 ) -> list[str]:
    """The patterns worth searching on ``backends`` (all of ``asked`` when given), among those the ticket method
    can find (``method_patterns``; all when None)."""
    if asked:
        out = list(dict.fromkeys(asked))
    else:
        out = ["channel"]
        if any(b in SPARSE_RUNTIMES for b in backends):
            out.append("unstructured")
        if any(b in NM_RUNTIMES for b in backends):
            out.append("2:4")
    return [p for p in out if method_patterns is None or p in method_patterns]


@dataclass(frozen=True)
class Candidate:
    pattern: str
    sparsity: float
    finetune_lr: float
    round_to: int = ROUNDINGS[0]  # channel counts kept multiples of this by compaction

    @property
    def name(self) -> str:
        base = f"{self.pattern.replace(':', 'of')}-s{self.sparsity:.3f}-lr{self.finetune_lr:g}"
        return base if self.round_to == ROUNDINGS[0] else f"{base}-r{self.round_to}"

    @property
    def mined_as(self) -> "Candidate":
        """The candidate whose ticket this one is (a rounding variant shares its mined and trained weights)."""
        return Candidate(self.pattern, self.sparsity, self.finetune_lr)

    def to_json(self) -> dict:
        return {**asdict(self), "name": self.name}


@dataclass(frozen=True)
class Goal:
    max_drop: float  # points of validation accuracy
    target_speedup: float | None = None
    target_latency_ms: float | None = None

    @property
    def wants_speed(self) -> bool:
        return self.target_speedup is not None or self.target_latency_ms is not None

    def speed_ok(self, option: dict) -> bool:
        if self.target_speedup is not None:
            return option["speedup"] is not None and option["speedup"] >= self.target_speedup
        if self.target_latency_ms is not None:
            return option["latency_ms"] <= self.target_latency_ms
        return True

    def accuracy_ok(self, option: dict, dense_val: float) -> bool:
        return drop_points(option, dense_val) <= self.max_drop + 1e-9

    def meets(self, option: dict, dense_val: float) -> bool:
        return self.accuracy_ok(option, dense_val) and self.speed_ok(option)

    def shortfall(self, option: dict, dense_val: float) -> float:
        """How far ``option`` is from the goal, in relative units (0 when it meets it)."""
        acc = max(0.0, drop_points(option, dense_val) - self.max_drop) / max(self.max_drop, 0.5)
        speed = 0.0
        if self.target_speedup is not None:
            speed = max(0.0, self.target_speedup / max(option["speedup"] or 1e-9, 1e-9) - 1.0)
        elif self.target_latency_ms is not None:
            speed = max(0.0, option["latency_ms"] / self.target_latency_ms - 1.0)
        return acc + speed

    def describe(self) -> str:
        speed = (f", at least {self.target_speedup:g}x faster than dense" if self.target_speedup is not None else
                 f", at most {self.target_latency_ms:g} ms" if self.target_latency_ms is not None else "")
        aim = "the most accurate model" if self.wants_speed else "the fastest model"
        return f"{aim} within {self.max_drop:g} point(s) of dense validation accuracy{speed}"


def drop_points(option: dict, dense_val: float) -> float:
    return 100.0 * (dense_val - option["val_acc"])


def _middle_out(values: tuple[float, ...]) -> list[float]:
    """The median first, then alternately the next sparser and the next denser: a budget cut short still brackets."""
    order = sorted(values)
    mid = len(order) // 2
    out = [order[mid]]
    for k in range(1, len(order)):
        for j in (mid + k, mid - k):
            if 0 <= j < len(order) and order[j] not in out:
                out.append(order[j])
    return out


def coarse_grid(patterns: list[str], lr: float) -> list[Candidate]:
    """Every pattern's grid, middle-out, the patterns interleaved (so a short budget still tries each of them)."""
    columns = [[Candidate(p, s, lr) for s in _middle_out(GRIDS[p])] for p in patterns]
    return [c for row in range(max(map(len, columns), default=0)) for col in columns if row < len(col)
            for c in [col[row]]]


def _rounded(s: float) -> float:
    return round(min(MAX_SPARSITY, s), 3)


def refine(pattern: str, lr: float, measured: dict[float, bool], tried: set[float]) -> float | None:
    """The next sparsity to try for ``pattern``: the middle of the gap between the sparsest candidate that met the
    goal (``measured[s]`` True) and the least sparse one that did not; past the sparsest when all met it, below the
    least sparse when none did. None when the frontier is found to within MIN_GAP."""
    if not measured:
        return None
    ok = [s for s, good in measured.items() if good]
    bad = [s for s, good in measured.items() if not good]
    if ok and bad and max(ok) < min(bad):
        lo, hi = max(ok), min(b for b in bad if b > max(ok))
    elif ok and not bad:
        lo, hi = max(ok), MAX_SPARSITY if pattern != "channel" else 0.95
    elif bad and not ok:
        lo, hi = 0.0 if pattern != "2:4" else 0.5, min(bad)
        if pattern == "2:4":
            return None  # 2:4 itself (0.5) failed: nothing less sparse keeps the pattern
    else:  # met and missed interleave (noise): refine just above the sparsest good one
        lo = max(ok)
        above = [b for b in bad if b > lo]
        if not above:
            hi = MAX_SPARSITY
        else:
            hi = min(above)
    if hi - lo < MIN_GAP:
        return None
    nxt = _rounded((lo + hi) / 2)
    return None if any(math.isclose(nxt, t, abs_tol=1e-3) for t in tried) or nxt <= lo else nxt


def pareto_front(options: list[dict]) -> list[dict]:
    """The options no other option beats on both validation accuracy and latency (ties kept)."""
    front = []
    for o in options:
        dominated = any(p["val_acc"] >= o["val_acc"] and p["latency_ms"] <= o["latency_ms"]
                        and (p["val_acc"] > o["val_acc"] or p["latency_ms"] < o["latency_ms"]) for p in options)
        if not dominated:
            front.append(o)
    return sorted(front, key=lambda o: o["latency_ms"])


def pick(options: list[dict], dense_val: float, goal: Goal) -> dict:
    """The option that meets the goal with the best other figure (speed goal: accuracy; accuracy goal: latency), and
    why; when none meets it, the closest one and how far it is."""
    meeting = [o for o in options if goal.meets(o, dense_val)]
    if meeting:
        if goal.wants_speed:
            best = max(meeting, key=lambda o: (o["val_acc"], -o["latency_ms"]))
            why = (f"meets the goal and is the most accurate of the {len(meeting)} option(s) that do "
                   f"({drop_points(best, dense_val):+.2f} points vs dense on validation)")
        else:
            best = min(meeting, key=lambda o: (o["latency_ms"], -o["val_acc"]))
            why = (f"the fastest of the {len(meeting)} option(s) within {goal.max_drop:g} point(s) of dense "
                   f"({best['speedup']:.2f}x dense)" if best.get("speedup") else
                   f"the fastest of the {len(meeting)} option(s) within {goal.max_drop:g} point(s) of dense")
        return {"option": best, "meets_goal": True, "why": why, "shortfall": 0.0}
    best = min(options, key=lambda o: (goal.shortfall(o, dense_val), o["latency_ms"]))
    parts = [f"validation drop {drop_points(best, dense_val):.2f} points (goal <= {goal.max_drop:g})"]
    if goal.target_speedup is not None:
        parts.append(f"{best['speedup'] or 0:.2f}x dense (goal >= {goal.target_speedup:g}x)")
    elif goal.target_latency_ms is not None:
        parts.append(f"{best['latency_ms']:.3g} ms (goal <= {goal.target_latency_ms:g} ms)")
    return {"option": best, "meets_goal": False, "shortfall": goal.shortfall(best, dense_val),
            "why": "no option meets the goal; the closest: " + ", ".join(parts)}
