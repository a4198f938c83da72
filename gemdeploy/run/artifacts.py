"""Loading what a finished run directory holds, for compaction, export, bench and sanity checks; every file is
checked for shape as it is read, so a damaged run fails with one line before any long work."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from gemdeploy.errors import GemdeployError
from gemdeploy.data import data_for
from gemdeploy.models import load_weights, model_for
from gemdeploy.run import layout
from gemdeploy.run.config import MineConfig
from gemdeploy.run.rundir import RunDir
from gemdeploy.sparsity.masks import Mask

SUMMARY_SCHEMA = {"method": str, "model": str, "data": str, "sparsity": float, "density": float,
                  "test_acc": (float, type(None)), "time_to_ticket_s": float}


@dataclass
class RunArtifacts:
    run: RunDir
    config: MineConfig
    input_shape: tuple[int, int, int]
    num_classes: int

    @classmethod
    def open(cls, path: str | Path) -> "RunArtifacts":
        run = RunDir.open(path)
        config = MineConfig.from_json(run.read_json(layout.CONFIG), str(run / layout.CONFIG))
        if not run.has(layout.MODEL):
            raise GemdeployError(f"{run.path} has no {layout.MODEL}; was it written by `gemdeploy mine`?")
        info = run.read_object(layout.MODEL, {"input_shape": list, "num_classes": int})
        shape = info["input_shape"]
        if len(shape) != 3 or not all(isinstance(v, int) and v > 0 for v in shape) or info["num_classes"] < 1:
            raise GemdeployError(f"{run / layout.MODEL}: input_shape must be 3 positive integers and num_classes >= 1")
        return cls(run, config, tuple(shape), int(info["num_classes"]))

    def architecture(self) -> nn.Module:
        """The run's network, freshly built (a user's factory file checked against the sha256 the run recorded)."""
        try:
            return model_for(self.config, self.input_shape, self.num_classes)
        except GemdeployError as exc:
            raise GemdeployError(_for_run(str(exc), self.run.path)) from None

    def _load_into(self, model: nn.Module, name: str) -> nn.Module:
        try:
            load_weights(model, self.run.load_tensors(name))
        except RuntimeError as exc:
            raise GemdeployError(f"{self.run / name} does not fit {self.config.model}: "
                                 f"{str(exc).splitlines()[0]}") from None
        return model

    def build(self) -> nn.Module:
        """The architecture with its initial weights."""
        return self._load_into(self.architecture(), layout.INIT)

    def mask(self) -> Mask:
        if not self.run.has(layout.MASK):
            raise GemdeployError(f"{self.run.path} has no ticket yet ({layout.MASK}); finish it with "
                                 f"`gemdeploy mine --out {self.run.path} --resume`")
        mask = Mask.load(self.run / layout.MASK)
        try:
            mask.check_matches(self.architecture())
        except ValueError as exc:
            raise GemdeployError(f"{self.run / layout.MASK} does not fit {self.config.model}: {exc}") from None
        return mask

    def finetuned_model(self) -> nn.Module:
        """The fine-tuned ticket in eval mode, pruned weights exactly zero."""
        if not self.run.has(layout.WEIGHTS):
            raise GemdeployError(f"{self.run.path} has no fine-tuned ticket ({layout.WEIGHTS}); "
                                 f"finish it with `gemdeploy mine --out {self.run.path} --resume`")
        return self._load_into(self.architecture(), layout.WEIGHTS).eval()

    def is_finished(self) -> bool:
        return self.run.has(layout.SUMMARY)

    def summary(self) -> dict:
        if not self.is_finished():
            raise GemdeployError(f"{self.run.path} is not finished (no {layout.SUMMARY}); finish it with "
                                 f"`gemdeploy mine --out {self.run.path} --resume`")
        return self.run.read_object(layout.SUMMARY, SUMMARY_SCHEMA)

    def data(self, device: torch.device | str = "cpu"):
        try:
            return data_for(self.config).to(torch.device(device))
        except GemdeployError as exc:
            raise GemdeployError(_for_run(str(exc), self.run.path)) from None


def _for_run(message: str, path: Path) -> str:
    """Name the run in the refusal of an object gemdeploy.api was given (it has the path the user needs)."""
    return message.replace("open_run(RUN,", f"open_run({str(path)!r},")
