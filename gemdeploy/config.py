"""The resolved configuration of a `mine` run, stored as config.json in the run directory."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

PATTERNS = ("unstructured", "2:4", "channel")


@dataclass
class MineConfig:
    model: str = "resnet20"
    data: str = "cifar10"
    method: str = "gem-miner"
    sparsity: float = 0.986  # fraction of prunable weights removed
    pattern: str = "unstructured"
    nm: str = "2:4"  # N:M pattern used when pattern is "2:4" (kept N of every M along input channels)
    epochs: int = 150  # mining / pruning epochs (per IMP round for IMP)
    finetune_epochs: int = 150
    batch_size: int = 128
    lr: float = 0.1  # mining: SGD, momentum 0.9, no weight decay, cosine schedule
    finetune_lr: float = 0.01  # fine-tuning: SGD, momentum 0.9, x0.1 at 53% and 80% of the epochs
    momentum: float = 0.9
    weight_decay: float = 1e-4  # fine-tuning only; scores are never decayed
    lam: float | None = None  # Gem-Miner L2 penalty on scores; None picks the paper's value for the density
    freeze_period: int | None = None  # None: the paper's 5 epochs per 150, scaled to --epochs
    init: str = "signed-constant"
    seed: int = 0
    device: str = "auto"
    compile: bool = False
    data_dir: str | None = None
    download: bool = False
    round_to: int = 8  # compaction keeps channel counts multiples of this
    channel_sparsity: float | None = None  # Gem-Miner: first remove this fraction of channels, then mine --pattern inside
    imp_rewind_iter: int = 1000  # IMP: rewind point (iterations), capped at one epoch for small data sets
    imp_from: str | None = None  # IMP: reuse the levels of an earlier IMP run on the same trajectory
    extra: dict = field(default_factory=dict)

    @property
    def density(self) -> float:
        return 1.0 - self.sparsity

    def resolved_lam(self) -> float:
        """The paper's grid-searched lambda for ResNet-20 on CIFAR-10, by target density (DESIGN.md section 4)."""
        if self.lam is not None:
            return self.lam
        d = self.density
        if d <= 0.015:
            return 1e-4
        if d <= 0.04:
            return 3e-5
        return 1e-5

    def resolved_freeze_period(self) -> int:
        if self.freeze_period is not None:
            return self.freeze_period
        return max(1, round(5 * self.epochs / 150))

    def to_json(self) -> dict:
        out = dataclasses.asdict(self)
        out["lam"] = self.resolved_lam()
        out["freeze_period"] = self.resolved_freeze_period()
        return out

    @classmethod
    def from_json(cls, obj: dict) -> "MineConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(obj) - known
        if unknown:
            from gemdeploy.errors import GemdeployError

            raise GemdeployError(f"config.json has unknown keys: {', '.join(sorted(unknown))}")
        return cls(**obj)
