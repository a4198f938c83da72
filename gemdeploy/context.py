"""What a method needs while it works: config, data, hardware, the run directory and per-epoch checkpoints."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field

import torch
from torch import nn

from gemdeploy import distributed as dist
from gemdeploy.config import MineConfig
from gemdeploy.data import DataBundle
from gemdeploy.models import build_model
from gemdeploy.progress import Reporter
from gemdeploy.rundir import RunDir, load_metadata
from gemdeploy.training import Hardware


@dataclass
class Checkpoint:
    epoch: int  # completed epochs
    elapsed: float  # wall seconds spent in the phase so far
    tensors: dict[str, torch.Tensor]
    extra: dict = field(default_factory=dict)


@dataclass
class RunContext:
    config: MineConfig
    data: DataBundle
    hw: Hardware
    run: RunDir
    reporter: Reporter
    init_state: dict[str, torch.Tensor]
    resume: bool = False

    def fresh_model(self, affine_bn: bool = False) -> nn.Module:
        """The network at its initial weights (the state every method starts from), on the device."""
        model = build_model(self.config.model, self.data.input_shape, self.data.num_classes, affine_bn=affine_bn)
        model.load_state_dict(self.init_state)
        return self.hw.prepare(model)

    # --- metrics -----------------------------------------------------------------------------------
    def log(self, record: dict) -> None:
        if dist.is_main():
            self.run.append_metrics(record)

    def _forget_metrics_after(self, phase: str, epoch: int) -> None:
        """Drop records a crashed attempt logged past the point we resume from."""
        if not dist.is_main():
            return
        records = self.run.metrics()
        kept = [r for r in records if not (r.get("phase") == phase and r.get("epoch", 0) > epoch)]
        if len(kept) != len(records):
            from gemdeploy.rundir import atomic_write_bytes

            atomic_write_bytes(self.run / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in kept).encode())

    # --- checkpoints -------------------------------------------------------------------------------
    def _ckpt_name(self, phase: str) -> str:
        return f"checkpoint-{phase}.safetensors"

    def save_checkpoint(self, phase: str, ckpt: Checkpoint) -> None:
        if dist.is_main():
            meta = {"phase": phase, "epoch": str(ckpt.epoch), "elapsed": repr(ckpt.elapsed), "extra": json.dumps(ckpt.extra)}
            self.run.save_tensors(self._ckpt_name(phase), ckpt.tensors, metadata=meta)
        dist.barrier()

    def load_checkpoint(self, phase: str) -> Checkpoint | None:
        """The phase's last checkpoint when resuming (and forget metrics logged after it)."""
        name = self._ckpt_name(phase)
        if not (self.resume and self.run.has(name)):
            self._forget_metrics_after(phase, 0)
            return None
        meta = load_metadata(self.run / name)
        tensors = self.run.load_tensors(name, device=self.hw.device)
        ckpt = Checkpoint(int(meta["epoch"]), float(meta["elapsed"]), tensors, json.loads(meta.get("extra", "{}")))
        self._forget_metrics_after(phase, ckpt.epoch)
        return ckpt

    def clear_checkpoint(self, phase: str) -> None:
        if dist.is_main():
            (self.run / self._ckpt_name(phase)).unlink(missing_ok=True)


class PhaseTimer:
    """Wall time of a phase, continued across resumes."""

    def __init__(self, already: float = 0.0):
        self.already = already
        self.start = time.perf_counter()

    def elapsed(self) -> float:
        return self.already + time.perf_counter() - self.start
