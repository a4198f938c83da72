"""What a method needs while it works: config, data, hardware, the run directory and the initial weights."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from gemdeploy.data.splits import DataBundle
from gemdeploy.models import load_weights, model_for
from gemdeploy.progress import Reporter
from gemdeploy.run.config import MineConfig
from gemdeploy.run.rundir import RunDir
from gemdeploy.train.loop import Hardware


@dataclass
class RunContext:
    config: MineConfig  # resolved
    data: DataBundle
    hw: Hardware
    run: RunDir
    reporter: Reporter
    init_state: dict[str, torch.Tensor]
    resume: bool = False
    layer_targets: dict[str, int] | None = None  # sanity's invert: mine to these per-layer counts

    def fresh_model(self, state: dict[str, torch.Tensor] | None = None) -> nn.Module:
        """The network at ``state`` (default: its initial weights), on the device."""
        model = model_for(self.config, self.data.input_shape, self.data.num_classes)
        load_weights(model, self.init_state if state is None else state)
        return self.hw.prepare(model)

    def log(self, record: dict) -> None:
        self.run.append_metrics(record)
