"""The options of `gemdeploy bench`, declared once (default, help, range, choices)."""

from __future__ import annotations

from dataclasses import dataclass

from gemdeploy.bench.backends import BACKENDS
from gemdeploy.errors import GemdeployError
from gemdeploy.options import at_least, each, option, validate


@dataclass(frozen=True)
class BenchOptions:
    batch_size: list[int] = option([1, 64], "Batch sizes to time (repeatable).", check=each(at_least(1)), short="-b")
    backend: list[str] = option([], "Only these backends (repeatable; default: every available one that is not "
                                "opt-in). See `gemdeploy methods`.", choices=BACKENDS.names, kind="backend")
    iters: int = option(50, "Timed calls per measurement (a noisy one is repeated with 4x as many).",
                        check=at_least(1))
    warmup: int = option(10, "Untimed warm-up calls.", check=at_least(0))
    threads: int = option(1, "CPU threads of every CPU backend (0: all cores). 1 by default: steady, comparable "
                          "latencies, even where other work runs.", check=at_least(0))

    def resolve(self) -> "BenchOptions":
        validate(self)
        if not self.batch_size:
            raise GemdeployError("--batch-size needs at least one value")
        return self

    @property
    def batch_sizes(self) -> list[int]:
        return sorted(set(self.batch_size))
