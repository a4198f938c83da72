"""One resumable phase: the single epoch loop every training stage runs through.

Gem-Miner's mining, edge-popup, fine-tuning, IMP's rounds, sanity checks and the N:M repair all describe
themselves as a `Phase` (the module to checkpoint, its optimizer, a learning rate per epoch, hooks after
each step and at the end of each epoch); `run_phase` owns the rest: resuming from the phase's checkpoint
(module state and SGD momentum), wall time continued across resumes, one metrics record per epoch,
validation, the progress bar, and rank-0-only writes (through RunDir).

Checkpoint file: layout.checkpoint(name), tensors ``state.<key>`` (the module's state_dict) and
``momentum.<parameter name>``, metadata ``epoch`` (completed) and ``elapsed`` (seconds).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn

from gemdeploy.models import load_weights
from gemdeploy.run import layout
from gemdeploy.run.rundir import RunDir
from gemdeploy.files import load_metadata
from gemdeploy.train import distributed as dist
from gemdeploy.train.loop import EpochStats, current_lr, evaluate, make_step, set_lr, train_epoch


@dataclass
class Phase:
    name: str  # checkpoint and metrics name ("mine", "finetune", "imp-round-3", ...)
    epochs: int
    module: nn.Module  # what is checkpointed (its state_dict) and switched between train and eval
    optimizer: torch.optim.Optimizer
    lr: Callable[[int], float]  # epoch (0-based) -> learning rate
    batch_size: int
    seed: int  # data order and augmentation of every epoch
    forward: Callable[[torch.Tensor], torch.Tensor] | None = None  # training forward (DDP / compiled); default module
    penalty: Callable[[], torch.Tensor] | None = None  # added to the loss
    after_step: Callable[[], None] | None = None  # after every optimizer step (projection, mask enforcement)
    end_of_epoch: Callable[[int], None] | None = None  # completed epoch count, before validation (freezing)
    after_load: Callable[[], None] | None = None  # after a checkpoint is restored
    density: Callable[[], float] = lambda: 1.0  # reported per epoch
    record: Callable[[], dict] | None = None  # extra fields for each metrics record
    fixed: dict = field(default_factory=dict)  # constant fields for each metrics record (IMP level, ...)


@dataclass
class PhaseResult:
    val: EpochStats  # validation after the last epoch
    seconds: float  # wall time of the phase, across resumes


def _param_names(module: nn.Module) -> dict[int, str]:
    return {id(p): n for n, p in module.named_parameters()}


def _momentum(optimizer: torch.optim.Optimizer, names: dict[int, str]) -> dict[str, torch.Tensor]:
    out = {}
    for group in optimizer.param_groups:
        for p in group["params"]:
            buf = optimizer.state.get(p, {}).get("momentum_buffer")
            if buf is not None:
                out[names[id(p)]] = buf
    return out


def _restore_momentum(optimizer: torch.optim.Optimizer, names: dict[int, str], buffers: dict[str, torch.Tensor]) -> None:
    for group in optimizer.param_groups:
        for p in group["params"]:
            key = names.get(id(p))
            if key in buffers:
                optimizer.state[p]["momentum_buffer"] = buffers[key].to(p.device, p.dtype).clone()


def save_checkpoint(run: RunDir, phase: Phase, epoch: int, elapsed: float) -> None:
    tensors = {f"state.{k}": v for k, v in phase.module.state_dict().items()}
    tensors.update({f"momentum.{k}": v for k, v in _momentum(phase.optimizer, _param_names(phase.module)).items()})
    run.save_tensors(layout.checkpoint(phase.name), tensors,
                     metadata={"phase": phase.name, "epoch": str(epoch), "elapsed": repr(elapsed)})
    dist.barrier()  # the other ranks go on once rank 0's checkpoint is on disk


def load_checkpoint(run: RunDir, phase: Phase, device) -> tuple[int, float] | None:
    """Restore ``phase`` from its checkpoint; returns (completed epochs, elapsed seconds), or None."""
    name = layout.checkpoint(phase.name)
    if not run.has(name):
        return None
    meta = load_metadata(run / name)
    tensors = run.load_tensors(name, device=device)
    load_weights(phase.module, {k[6:]: v for k, v in tensors.items() if k.startswith("state.")})
    _restore_momentum(phase.optimizer, _param_names(phase.module),
                      {k[9:]: v for k, v in tensors.items() if k.startswith("momentum.")})
    return int(meta["epoch"]), float(meta["elapsed"])


def clear_checkpoint(run: RunDir, name: str) -> None:
    run.remove(layout.checkpoint(name))


def run_phase(ctx: Any, phase: Phase) -> PhaseResult:
    """Run ``phase`` to its last epoch, resuming from its checkpoint when ``ctx.resume``.

    ``ctx`` supplies ``run`` (RunDir), ``data`` (train/val splits), ``hw`` (Hardware), ``reporter`` and ``resume``.
    The checkpoint stays after the last epoch (the caller clears it once it has saved the phase's result), so an
    interruption in between resumes with nothing left to train.
    """
    run, hw = ctx.run, ctx.hw
    start, already = 0, 0.0
    restored = load_checkpoint(run, phase, hw.device) if ctx.resume else None
    if restored is not None:
        start, already = restored
        if phase.after_load is not None:
            phase.after_load()
    # Forget what an interrupted attempt logged past the point we continue from.
    run.forget_metrics(lambda r: r.get("phase") == phase.name and r.get("epoch", 0) > start)
    began = time.perf_counter()

    def elapsed() -> float:
        return already + time.perf_counter() - began

    forward = phase.forward or phase.module
    # One step for the whole phase: with hw.cuda_graph it is captured once (after the checkpoint is restored, so it
    # holds the restored tensors) and replayed every batch of every epoch.
    step = make_step(forward, phase.optimizer, hw, phase.penalty, phase.after_step)
    ctx.reporter.start(phase.name, phase.epochs, start)
    val = None
    for epoch in range(start, phase.epochs):
        set_lr(phase.optimizer, phase.lr(epoch))
        phase.module.train()
        stats = train_epoch(forward, phase.optimizer, ctx.data.train, hw, epoch=epoch, seed=phase.seed,
                            batch_size=phase.batch_size, step=step)
        if phase.end_of_epoch is not None:
            phase.end_of_epoch(epoch + 1)
        phase.module.eval()
        val = evaluate(phase.module, ctx.data.val, hw)
        density = phase.density()
        run.append_metrics({"phase": phase.name, "epoch": epoch + 1, "lr": current_lr(phase.optimizer),
                            "loss": stats.loss, "train_acc": stats.acc, "val_acc": val.acc, "val_loss": val.loss,
                            "density": density, "images_per_s": stats.images_per_s, "time_s": elapsed(),
                            **(phase.record() if phase.record else {}), **phase.fixed})
        save_checkpoint(run, phase, epoch + 1, elapsed())
        ctx.reporter.update(loss=stats.loss, acc=val.acc, density=density)
    phase.module.eval()
    if val is None:
        val = evaluate(phase.module, ctx.data.val, hw)
    return PhaseResult(val, elapsed())
