"""Which model a run deploys: decided here once, and read by export (what it exports), bench (what its PyTorch
backends time) and gemdeploy.api (Run.model).

The compacted model when the run has one, except where compaction would lose the N:M layout the run was mined
for (the sparse tensor-core kernels need it): then the fine-tuned masked model, which keeps it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from torch import nn

from gemdeploy.compact.compaction import load_compacted_model
from gemdeploy.run import layout
from gemdeploy.run.artifacts import RunArtifacts
from gemdeploy.sparsity import PATTERNS

COMPACTED, FINETUNED = "compacted", "finetuned"


@dataclass
class Deployed:
    model: nn.Module  # eval mode
    source: str  # COMPACTED | FINETUNED
    weights: Path  # the file the model was loaded from: its sha256 ties exported files to it; its size is reported
    masked: nn.Module  # the fine-tuned masked model (the dense-size reference of an export)
    note: str | None  # why the fine-tuned model is deployed although the run was compacted (or has no compaction)


def deployed_model(art: RunArtifacts) -> Deployed:
    masked = art.finetuned_model()
    weights = art.run / layout.WEIGHTS
    if not art.run.has(layout.COMPACT_RECORD):
        return Deployed(masked, FINETUNED, weights, masked,
                        "the run has no compact.json: exporting the fine-tuned masked model")
    compacted = load_compacted_model(art).eval()
    if not PATTERNS.get(art.config.pattern).deploys_compacted(masked, compacted):
        return Deployed(masked, FINETUNED, weights, masked,
                        "compaction broke the 2:4 layout TensorRT needs: exporting the fine-tuned masked model "
                        "(2:4 kept)")
    return Deployed(compacted, COMPACTED, art.run / layout.COMPACT_WEIGHTS, masked, None)
