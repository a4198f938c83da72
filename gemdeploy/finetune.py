"""Training with a fixed mask: fine-tuning a ticket, training the dense model, IMP's rounds.

A pruned weight stays exactly zero throughout: its gradient is masked before the optimizer sees it, so
its momentum buffer stays zero and weight decay (proportional to the weight) has nothing to act on, and
the mask is re-applied after every step as a guard against any other update.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from gemdeploy import distributed as dist
from gemdeploy.context import Checkpoint, PhaseTimer, RunContext
from gemdeploy.masks import Mask, prunable_weights
from gemdeploy.training import (EpochStats, evaluate, load_momentum_buffers, maybe_compile, momentum_buffers,
                                set_lr, sgd, step_lr, train_epoch)


class MaskedModel:
    """Keeps ``mask`` applied to ``model``'s prunable weights through training."""

    def __init__(self, model: nn.Module, mask: Mask):
        self.model = model
        self.weights = prunable_weights(model)
        self.mask = mask.to(next(model.parameters()).device)
        mask.check_matches(model)
        self.enforce()
        self._hooks = [w.register_hook(lambda g, m=self.mask[k]: g * m.to(g.dtype)) for k, w in self.weights.items()]

    @torch.no_grad()
    def enforce(self) -> None:
        for k, w in self.weights.items():
            w.mul_(self.mask[k].to(w.dtype))

    def remove(self) -> None:
        for h in self._hooks:
            h.remove()


def wrap_ddp(module: nn.Module, hw) -> nn.Module:
    if not dist.is_distributed():
        return module
    from torch.nn.parallel import DistributedDataParallel

    ids = [hw.device.index] if hw.device.type == "cuda" else None
    return DistributedDataParallel(module, device_ids=ids)


def train_masked(ctx: RunContext, mask: Mask, *, phase: str, epochs: int, lr: float, weight_decay: float,
                 schedule: Callable[[float, int, int], float] = step_lr, model: nn.Module | None = None,
                 density: float | None = None, extra_record: dict | None = None) -> tuple[nn.Module, EpochStats, float]:
    """SGD with the mask fixed, checkpointed every epoch under ``phase``.

    Returns the trained model (eval mode), its validation stats and the phase's wall time in seconds.
    """
    cfg, hw = ctx.config, ctx.hw
    model = model if model is not None else ctx.fresh_model()
    named = {id(p): n for n, p in model.named_parameters()}
    masked = MaskedModel(model, mask)
    optimizer = sgd(model.parameters(), lr, cfg.momentum, weight_decay)
    start, timer = 0, PhaseTimer()
    ckpt = ctx.load_checkpoint(phase)
    if ckpt is not None:
        model.load_state_dict({k[len("model."):]: v for k, v in ckpt.tensors.items() if k.startswith("model.")})
        load_momentum_buffers(optimizer, named, {k[len("momentum."):]: v for k, v in ckpt.tensors.items()
                                                 if k.startswith("momentum.")})
        start, timer = ckpt.epoch, PhaseTimer(ckpt.elapsed)
        masked.enforce()
    density = mask.density() if density is None else density
    forward = maybe_compile(wrap_ddp(model, hw), hw)
    ctx.reporter.start(phase, epochs, start)
    val = None
    for epoch in range(start, epochs):
        set_lr(optimizer, schedule(lr, epoch, epochs))
        model.train()
        stats = train_epoch(forward, optimizer, ctx.data.train, hw, epoch=epoch, seed=cfg.seed + 7,
                            batch_size=cfg.batch_size, after_step=masked.enforce)
        model.eval()
        val = evaluate(model, ctx.data.val, hw)
        ctx.log({"phase": phase, "epoch": epoch + 1, "lr": optimizer.param_groups[0]["lr"], "loss": stats.loss,
                 "train_acc": stats.acc, "val_acc": val.acc, "val_loss": val.loss, "density": density,
                 "images_per_s": stats.images_per_s, "time_s": timer.elapsed(), **(extra_record or {})})
        tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
        tensors.update({f"momentum.{k}": v for k, v in momentum_buffers(optimizer, named).items()})
        ctx.save_checkpoint(phase, Checkpoint(epoch + 1, timer.elapsed(), tensors))
        ctx.reporter.update(loss=stats.loss, acc=val.acc, density=density)
    masked.remove()
    masked.enforce()
    model.eval()
    if val is None:
        val = evaluate(model, ctx.data.val, hw)
    return model, val, timer.elapsed()
