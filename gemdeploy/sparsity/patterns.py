"""The sparsity patterns a ticket can have (``--pattern``), as objects: what each one means for mining (the mask
projection), compaction (the constraint channel removal keeps), export (the check of the written file) and
TensorRT (the sparse-weights flag). Code asks the run's pattern instead of comparing its name.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from gemdeploy.sparsity.nm import nm_layout, nm_mask_from_scores, parse_nm

# TensorRT's sparse tensor-core kernels take exactly this layout (docs/design.md, section 5).
TENSORRT_NM = (2, 4)


@dataclass(frozen=True)
class Pattern:
    name: str
    per_channel: bool = False  # one score per coupled channel group: --sparsity is the fraction of channels removed

    def groups(self, nm: str) -> tuple[int, int] | None:
        """The N:M groups its masks hold along input channels (``nm``: the run's --nm), None when it has none."""
        return None

    def project(self, scores: torch.Tensor, nm: str, active: torch.Tensor | None = None) -> torch.Tensor:
        """The mask projection: the 0/1 mask of an eligible layer that keeps the highest ``scores`` among
        ``active`` entries which the pattern allows (every active entry when it adds no constraint)."""
        return torch.ones_like(scores) if active is None else (active > 0).to(scores.dtype)

    def compaction_constraint(self, nm: str) -> tuple[int, int] | None:
        """What channel removal must keep: the N:M groups (removing channels must not shift them), or None."""
        return self.groups(nm)

    def deploys_compacted(self, masked: torch.nn.Module, compacted: torch.nn.Module) -> bool:
        """Whether the compacted model keeps what this pattern is deployed for (else the masked model ships)."""
        return True

    def export_error(self, report_24: dict[str, bool]) -> str | None:
        """Why an fp32 export (``report_24``: eligible tensor -> holds 2:4) does not keep the pattern, or None."""
        return None

    def tensorrt_sparse_weights(self, report_24: dict[str, bool]) -> bool:
        """Whether TensorRT builds with its sparse-weights flag: whenever a tensor holds 2:4 (TensorRT decides per
        layer, and a very sparse unstructured ticket often holds 2:4 by chance)."""
        return any(report_24.values())


@dataclass(frozen=True)
class NMPattern(Pattern):
    def groups(self, nm: str) -> tuple[int, int]:
        return parse_nm(nm)

    def project(self, scores, nm, active=None):
        n, m = self.groups(nm)
        return nm_mask_from_scores(scores, n, m, active)

    def deploys_compacted(self, masked, compacted):
        before = {k for k, holds in nm_layout(masked, *TENSORRT_NM).items() if holds}
        after = nm_layout(compacted, *TENSORRT_NM)
        return not before or all(after.get(k, True) for k in before)

    def export_error(self, report_24):
        bad = [k for k, holds in report_24.items() if not holds]
        if not bad:
            return None
        return (f"the 2:4 layout did not survive export: {len(bad)} of {len(report_24)} eligible tensors are not 2:4 "
                f"(e.g. {bad[0]})")


UNSTRUCTURED = Pattern("unstructured")
NM = NMPattern("2:4")
CHANNEL = Pattern("channel", per_channel=True)
