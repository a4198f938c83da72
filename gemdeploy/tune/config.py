"""The options of `gemdeploy tune`, declared once (default, help, range, choices)."""

from __future__ import annotations

import re
from dataclasses import dataclass

from gemdeploy.bench.backends import BACKENDS
from gemdeploy.errors import GemdeployError
from gemdeploy.mine.methods import METHODS
from gemdeploy.options import at_least, each, greater_than, in_range, option, optional, validate
from gemdeploy.sparsity import PATTERNS

_GOAL, _SEARCH, _MEASURE = "Goal", "Search", "Measurement"


def parse_budget(text: str) -> float:
    """'30m', '2h', '90s', '1h30m' or plain seconds -> seconds."""
    text = str(text).strip().lower()
    if re.fullmatch(r"\d+(\.\d+)?", text):
        return float(text)
    parts = re.findall(r"(\d+(?:\.\d+)?)([hms])", text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise GemdeployError(f"--budget {text!r} is not a duration; write it like 30m, 2h, 1h30m or 90s")
    return sum(float(n) * {"h": 3600, "m": 60, "s": 1}[u] for n, u in parts)


def _budget_check(value: str) -> str | None:
    try:
        return None if parse_budget(value) > 0 else "must be positive"
    except GemdeployError:
        return "must look like 30m, 2h, 1h30m or 90s"


def _tunable_methods() -> list[str]:
    return [m for m in METHODS.names() if m != "dense"]


@dataclass(frozen=True)
class TuneOptions:
    model: str = option("lenet300", "Architecture (as `gemdeploy mine --model`).")
    data: str = option("mnist5k", "Data set (as `gemdeploy mine --data`).")
    data_dir: str | None = option(None, "Folder of the data set, where it needs one (as `gemdeploy mine`).")
    backend: list[str] = option([], "Runtime(s) to deploy on (repeatable, at least one; e.g. onnxruntime-cpu and "
                                "sparse-cpu): every candidate is measured on each, and the pick names its runtime.",
                                choices=BACKENDS.names, kind="backend")
    batch_size: int = option(64, "The batch size the deployment serves: latency is measured at it.",
                             check=at_least(1), short="-b", panel=_GOAL)
    max_drop: float = option(1.0, "Largest acceptable validation-accuracy drop against the dense model, in points.",
                             check=in_range(0, 100), panel=_GOAL)
    target_speedup: float | None = option(None, "Instead of the fastest model within --max-drop: the most accurate "
                                          "one at least this much faster than dense (still within --max-drop).",
                                          check=optional(greater_than(0)), panel=_GOAL)
    target_latency_ms: float | None = option(None, "Like --target-speedup, as a latency in milliseconds at "
                                             "--batch-size.", check=optional(greater_than(0)), panel=_GOAL)
    budget: str = option("30m", "Wall time for the whole search (30m, 2h, 90s): at its end tune stops cleanly and "
                         "says what it did not try.", check=_budget_check, panel=_SEARCH)
    method: str = option("gem-miner", "Ticket-finding method of every candidate.", choices=_tunable_methods,
                         kind="method", panel=_SEARCH)
    dense: str | None = option(None, "Reuse this trained dense run (`gemdeploy mine --method dense`) as the "
                               "reference instead of training one.", metavar="RUN", panel=_SEARCH)
    pattern: list[str] = option([], "Only these patterns (default: channel everywhere, unstructured where a sparse "
                                "runtime is among the backends, 2:4 where one has sparse kernels).",
                                choices=PATTERNS.names, kind="pattern", panel=_SEARCH)
    epochs: int = option(10, "Mining epochs of every candidate (IMP: epochs per round).", check=at_least(1),
                         panel=_SEARCH)
    finetune_epochs: int = option(10, "Epochs training every ticket, and the dense reference.", check=at_least(1),
                                  panel=_SEARCH)
    finetune_lr: list[float] = option([0.01, 0.1], "Ticket training learning rates: the first trains every candidate "
                                      "(the authors' 0.01); the others (IMP's round recipe, 0.1) are tried on each "
                                      "pattern's best candidate.", check=each(greater_than(0)), panel=_SEARCH)
    seed: int = option(0, "Seed of every run.", check=at_least(0), panel=_SEARCH)
    device: str = option("auto", "Training device: auto, cpu or cuda.", panel=_SEARCH)
    iters: int = option(30, "Timed calls per latency measurement.", check=at_least(1), panel=_MEASURE)
    warmup: int = option(5, "Untimed warm-up calls.", check=at_least(0), panel=_MEASURE)
    threads: int = option(1, "CPU threads of the CPU backends (0: all cores).", check=at_least(0), panel=_MEASURE)

    def resolve(self) -> "TuneOptions":
        validate(self)
        if not self.backend:
            raise GemdeployError("--backend is needed at least once: the runtime the model will run on "
                                 f"(choose from {', '.join(BACKENDS.names())})")
        if self.target_speedup is not None and self.target_latency_ms is not None:
            raise GemdeployError("--target-speedup and --target-latency-ms are two goals; give one")
        if not self.finetune_lr:
            raise GemdeployError("--finetune-lr needs at least one value")
        return self

    @property
    def budget_s(self) -> float:
        return parse_budget(self.budget)

    # What a resumed tune must share with the one it continues (the goal, the budget and the batch size may
    # change; a new batch size re-measures every finished candidate instead of mining them again).
    SAME_SEARCH = ("model", "data", "method", "epochs", "finetune_epochs", "seed")
