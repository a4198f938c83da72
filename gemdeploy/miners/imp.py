"""Iterative magnitude pruning with weight rewinding (Frankle et al., 2019/2020), open_lth style.

- Rewind point: the initial weights trained for ``min(--imp-rewind-iter, one epoch)`` iterations.
- Round n (level n, density 0.8^n) trains the masked network from the rewind point for ``--epochs``
  epochs with the fine-tuning recipe (SGD ``--finetune-lr``, momentum, weight decay, x0.1 at 53% and
  80%); then 20% of the remaining weights with the smallest trained |w|, pooled over all layers, are
  pruned for the next level. Level 0 is the dense network.
- The run stops when the next 20% step would reach ``--sparsity``: the last step prunes exactly to the
  target (a partial round when the target is not a power of 0.8). Its mask is the ticket, which then
  gets the shared fine-tuning like every other method.
- Every level's mask, trained weights, validation accuracy and cumulative time land in
  ``imp-levels/level-NN.safetensors`` and in metrics.jsonl (phase ``imp``); ``--imp-from RUN`` continues
  from another IMP run's levels (same model, data, seed and recipe) instead of retraining them.

time_to_ticket is the total training time of all rounds up to the ticket (rewind phase included).
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import torch

from gemdeploy.context import PhaseTimer, RunContext
from gemdeploy.errors import GemdeployError
from gemdeploy.finetune import MaskedModel, train_masked
from gemdeploy.masks import Mask, global_keep, keep_count, prunable_weights
from gemdeploy.miners.base import METHODS, Method, Ticket
from gemdeploy.rundir import RunDir, load_metadata, load_tensors, save_tensors
from gemdeploy.training import set_lr, sgd, step_lr

RATE = 0.2  # fraction of the remaining weights pruned per round
LEVELS_DIR = "imp-levels"
# Config fields that must agree for one IMP run to reuse another's levels.
SAME_TRAJECTORY = ("model", "data", "method", "seed", "init", "epochs", "batch_size", "finetune_lr", "momentum",
                   "weight_decay", "imp_rewind_iter")


def level_counts(total: int, density: float) -> list[int]:
    """Kept counts of levels 0, 1, ...: 0.8^n of ``total`` down to (and ending exactly at) the target."""
    target = keep_count(total, density)
    counts = [total]
    while counts[-1] > target:
        nxt = keep_count(total, (1 - RATE) ** len(counts))
        # A full step that lands within 2% of the target (0.8^19 = 1.441% for 1.44%) ends there exactly,
        # rather than training one more round just to prune a handful of weights.
        counts.append(target if nxt <= target * 1.02 else nxt)
    return counts


def _level_name(n: int) -> str:
    return f"{LEVELS_DIR}/level-{n:02d}.safetensors"


def _save_level(run: RunDir, n: int, mask: Mask, trained: dict[str, torch.Tensor], record: dict) -> None:
    (run / LEVELS_DIR).mkdir(exist_ok=True)
    tensors = {f"mask.{k}": v.to(torch.uint8).cpu() for k, v in mask.items()}
    tensors.update({f"trained.{k}": v.detach().cpu() for k, v in trained.items()})
    save_tensors(run / _level_name(n), tensors, metadata={"record": json.dumps(record)})


def _load_level(path: Path) -> tuple[Mask, dict[str, torch.Tensor], dict]:
    tensors = load_tensors(path)
    mask = Mask({k[5:]: v.float() for k, v in tensors.items() if k.startswith("mask.")})
    trained = {k[8:]: v for k, v in tensors.items() if k.startswith("trained.")}
    return mask, trained, json.loads(load_metadata(path)["record"])


class IterativeMagnitude(Method):
    """IMP; subclasses choose what each round starts from (rewound weights or the trained ones)."""

    rewind: bool = True

    # --- the rewind point ---------------------------------------------------------------------------
    def _rewind_state(self, ctx: RunContext) -> tuple[dict[str, torch.Tensor], float]:
        run = ctx.run
        if run.has(f"{LEVELS_DIR}/rewind.safetensors"):
            meta = load_metadata(run / f"{LEVELS_DIR}/rewind.safetensors")
            return load_tensors(run / f"{LEVELS_DIR}/rewind.safetensors", ctx.hw.device), float(meta["seconds"])
        cfg, hw = ctx.config, ctx.hw
        timer = PhaseTimer()
        model = ctx.fresh_model()
        iters = self.rewind_iterations(ctx)
        if self.rewind and iters > 0:
            masked = MaskedModel(model, Mask.ones_like(model))
            optimizer = sgd(model.parameters(), cfg.finetune_lr, cfg.momentum, cfg.weight_decay)
            set_lr(optimizer, step_lr(cfg.finetune_lr, 0, cfg.epochs))
            model.train()
            import torch.nn.functional as F

            for i, (x, y) in enumerate(ctx.data.train.batches(cfg.batch_size, epoch=0, train=True, seed=cfg.seed + 7,
                                                              drop_last=True)):
                if i >= iters:
                    break
                with hw.autocast():
                    loss = F.cross_entropy(model(x).float(), y)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
            masked.remove()
        state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        seconds = timer.elapsed()
        (run / LEVELS_DIR).mkdir(exist_ok=True)
        save_tensors(run / f"{LEVELS_DIR}/rewind.safetensors", {k: v.cpu() for k, v in state.items()},
                     metadata={"seconds": repr(seconds), "iterations": str(iters)})
        return state, seconds

    def rewind_iterations(self, ctx: RunContext) -> int:
        per_epoch = max(1, len(ctx.data.train) // ctx.config.batch_size)
        return min(ctx.config.imp_rewind_iter, per_epoch)

    # --- reuse ------------------------------------------------------------------------------------
    def _import_levels(self, ctx: RunContext, counts: list[int]) -> None:
        """Copy the usable levels of ``--imp-from`` (and its rewind point) into this run."""
        src = Path(ctx.config.imp_from)
        if not (src / "config.json").is_file():
            raise GemdeployError(f"--imp-from {src}: not a gemdeploy run directory (no config.json)")
        other = json.loads((src / "config.json").read_text())
        mine = ctx.config.to_json()
        diff = [k for k in SAME_TRAJECTORY if other.get(k) != mine.get(k)]
        if diff:
            raise GemdeployError(f"--imp-from {src}: its {', '.join(diff)} differ from this run's; "
                                 "IMP levels can only be reused along the same trajectory")
        if not (src / f"{LEVELS_DIR}/rewind.safetensors").is_file():
            raise GemdeployError(f"--imp-from {src}: it has no {LEVELS_DIR}/ (was it an IMP run?)")
        (ctx.run / LEVELS_DIR).mkdir(exist_ok=True)
        shutil.copyfile(src / f"{LEVELS_DIR}/rewind.safetensors", ctx.run / f"{LEVELS_DIR}/rewind.safetensors")
        for n, count in enumerate(counts[:-1]):
            path = src / _level_name(n)
            if not path.is_file():
                break
            mask, _, record = _load_level(path)
            if mask.num_kept() != count:  # a partial level of the other run: not on this trajectory
                break
            shutil.copyfile(path, ctx.run / _level_name(n))
            ctx.log({**record, "reused_from": str(src)})

    # --- the rounds -------------------------------------------------------------------------------
    def find_ticket(self, ctx: RunContext) -> Ticket:
        cfg = ctx.config
        total = sum(w.numel() for w in prunable_weights(ctx.fresh_model()).values())
        counts = level_counts(total, cfg.density)
        if cfg.imp_from and not (ctx.run / _level_name(0)).is_file():
            self._import_levels(ctx, counts)
        rewind_state, rewind_seconds = self._rewind_state(ctx)

        # Continue after the last completed level on record (resume or --imp-from).
        mask, trained, levels = Mask.ones_like(ctx.fresh_model()).cpu(), None, []
        cumulative = rewind_seconds
        for n in range(len(counts) - 1):
            if not (ctx.run / _level_name(n)).is_file():
                break
            mask, trained, record = _load_level(ctx.run / _level_name(n))
            levels.append(record)
            cumulative = record["cumulative_time_s"]
        ctx._forget_metrics_after("imp", len(levels))
        start = len(levels)
        if start:
            mask = self._prune(mask, trained, counts[start])

        for n in range(start, len(counts) - 1):
            model = ctx.fresh_model()  # IMP-FT's first round starts from the initial weights
            if self.rewind:
                model.load_state_dict(rewind_state)
            elif trained is not None:
                model.load_state_dict({k: v.to(ctx.hw.device) for k, v in trained.items()})
            model, val, seconds = train_masked(ctx, mask, phase=f"imp-round-{n}", epochs=cfg.epochs,
                                               lr=cfg.finetune_lr, weight_decay=cfg.weight_decay, model=model,
                                               extra_record={"level": n})
            cumulative += seconds
            trained = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
            record = {"phase": "imp", "epoch": n + 1, "level": n, "density": mask.density(),
                      "kept_weights": mask.num_kept(), "val_acc": val.acc, "val_loss": val.loss,
                      "round_time_s": seconds, "cumulative_time_s": cumulative}
            _save_level(ctx.run, n, mask, trained, record)
            ctx.log(record)
            ctx.clear_checkpoint(f"imp-round-{n}")
            levels.append(record)
            mask = self._prune(mask, trained, counts[n + 1])
        return Ticket(mask.cpu(), None, {
            "mining_seconds": cumulative, "rounds": len(levels), "rewind_iterations": self.rewind_iterations(ctx),
            "rewind": self.rewind, "levels": [{k: r[k] for k in ("level", "density", "val_acc", "cumulative_time_s")}
                                              for r in levels]})

    @staticmethod
    def _prune(mask: Mask, trained: dict[str, torch.Tensor], keep: int) -> Mask:
        """Keep the ``keep`` largest trained |w| among the weights still alive (global, >= 1 per layer)."""
        scores = {k: trained[k].abs().float().cpu() for k in mask}
        return global_keep(scores, keep, eligible=mask.cpu())


@METHODS.register("imp")
class IMP(IterativeMagnitude):
    name = "imp"
    rewind = True
