"""Loading what a finished run directory holds, for compaction, export, bench and sanity checks."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from gemdeploy.config import MineConfig
from gemdeploy.errors import GemdeployError
from gemdeploy.masks import Mask
from gemdeploy.models import build_model
from gemdeploy.rundir import RunDir


@dataclass
class RunArtifacts:
    run: RunDir
    config: MineConfig
    input_shape: tuple[int, int, int]
    num_classes: int

    @classmethod
    def open(cls, path: str | Path) -> "RunArtifacts":
        run = RunDir.open(path)
        config = MineConfig.from_json(run.read_json("config.json"))
        if not run.has("model.json"):
            raise GemdeployError(f"{run.path} has no model.json; was it written by `gemdeploy mine`?")
        info = run.read_json("model.json")
        return cls(run, config, tuple(info["input_shape"]), int(info["num_classes"]))

    def build(self) -> nn.Module:
        """The architecture with its initial weights."""
        model = build_model(self.config.model, self.input_shape, self.num_classes)
        model.load_state_dict(self.run.load_tensors("init.safetensors"))
        return model

    def mask(self) -> Mask:
        if not self.run.has("mask.safetensors"):
            raise GemdeployError(f"{self.run.path} has no ticket yet (mask.safetensors); finish it with `gemdeploy mine --resume`")
        return Mask.load(self.run / "mask.safetensors")

    def finetuned_model(self) -> nn.Module:
        """The fine-tuned ticket in eval mode, pruned weights exactly zero."""
        if not self.run.has("weights.safetensors"):
            raise GemdeployError(f"{self.run.path} has no fine-tuned ticket (weights.safetensors); "
                                 f"finish it with `gemdeploy mine --out {self.run.path} --resume`")
        model = build_model(self.config.model, self.input_shape, self.num_classes)
        try:
            model.load_state_dict(self.run.load_tensors("weights.safetensors"))
        except RuntimeError as exc:
            raise GemdeployError(f"weights.safetensors in {self.run.path} do not fit {self.config.model}: "
                                 f"{str(exc).splitlines()[0]}") from None
        return model.eval()

    def summary(self) -> dict:
        return self.run.read_json("summary.json")

    def data(self, device: torch.device | str = "cpu"):
        from gemdeploy.data import load_data

        return load_data(self.config.data, self.config.data_dir, False).to(torch.device(device))
