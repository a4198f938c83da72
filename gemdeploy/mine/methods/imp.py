"""Iterative magnitude pruning with weight rewinding (Frankle et al., 2019/2020) on its reference's recipe
(gemdeploy.mine.recipes: open_lth for lenet300, the authors' configs/imp/resnet20.yml otherwise).

- Rewind point: the initial weights trained (dense) for ``imp_rewind_iter`` iterations with the round's learning
  rate; the iterations run across epochs when they must (1,000 iterations are 37 epochs of mnist5k).
- Round n (level n, density 0.8^n) trains the masked network from the rewind point for ``--epochs`` epochs with the
  round recipe (fresh optimizer and schedule each round); then 20% of the remaining weights with the smallest
  trained |w|, pooled over all pruned layers, go for the next level. Level 0 is the dense network. The output
  layer stays dense where the reference leaves it unpruned (``imp_prune_output``).
- The run stops when the next 20% step would reach ``--sparsity``: the last step prunes exactly to the target (a
  partial step when the target is not a power of 0.8). That mask is the ticket; it is trained from the rewind point
  with the round recipe for ``--finetune-epochs`` (the reference's last level is one more round).
- Every level's mask, trained weights, validation accuracy and cumulative time land in
  ``imp-levels/level-NN.safetensors`` and in metrics.jsonl (phase ``imp``); ``--imp-from RUN`` continues from
  another IMP run's levels (same model, data, seed and recipe) instead of retraining them.

time_to_ticket is the total training time of the rewind point and all rounds up to the ticket.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from gemdeploy.errors import GemdeployError
from gemdeploy.mine.context import RunContext
from gemdeploy.mine.methods.base import Method, Ticket, TicketTraining
from gemdeploy.mine.recipes import imp_recipe, imp_reference
from gemdeploy.run import layout
from gemdeploy.run.config import MineConfig
from gemdeploy.files import load_metadata, load_tensors, read_object
from gemdeploy.sparsity.masks import Mask, keep_count, prunable_weights
from gemdeploy.sparsity.topk import global_topk
from gemdeploy.train.masked import train_masked
from gemdeploy.train.phase import clear_checkpoint
from gemdeploy.train.seeds import seed_for

RATE = 0.2  # fraction of the remaining weights pruned per round
# Config fields that must agree for one IMP run to reuse another's levels.
SAME_TRAJECTORY = ("model", "data", "method", "seed", "init", "epochs", "batch_size", "imp_lr", "imp_momentum",
                   "imp_weight_decay", "imp_schedule", "imp_rewind_iter", "imp_prune_output")


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


def output_layer(names: list[str]) -> str:
    """The classifier: the last prunable weight in forward order."""
    return names[-1]


def _save_level(ctx: RunContext, n: int, mask: Mask, trained: dict[str, torch.Tensor], record: dict) -> None:
    tensors = {f"mask.{k}": v.to(torch.uint8).cpu() for k, v in mask.items()}
    tensors.update({f"trained.{k}": v.detach().cpu() for k, v in trained.items()})
    ctx.run.save_tensors(layout.imp_level(n), tensors, metadata={"record": json.dumps(record)})


def _load_level(path: Path) -> tuple[Mask, dict[str, torch.Tensor], dict]:
    tensors = load_tensors(path)
    mask = Mask({k[5:]: v.float() for k, v in tensors.items() if k.startswith("mask.")})
    trained = {k[8:]: v for k, v in tensors.items() if k.startswith("trained.")}
    try:
        record = json.loads(load_metadata(path)["record"])
    except (KeyError, ValueError):
        raise GemdeployError(f"{path} is not an IMP level file (no record in its metadata)") from None
    return mask, trained, record


class IterativeMagnitude(Method):
    """IMP; subclasses choose what each round and the ticket start from (rewound weights or the trained ones)."""

    rewind: bool = True

    # --- the rewind point ---------------------------------------------------------------------------
    def rewind_state(self, ctx: RunContext) -> tuple[dict[str, torch.Tensor], float]:
        """The weights at the rewind point (made once, then read from imp-levels/rewind.safetensors)."""
        run = ctx.run
        if run.has(layout.IMP_REWIND):
            meta = load_metadata(run / layout.IMP_REWIND)
            return load_tensors(run / layout.IMP_REWIND, ctx.hw.device), float(meta["seconds"])
        cfg, hw = ctx.config, ctx.hw
        t0 = time.perf_counter()
        model = ctx.fresh_model()
        iters = self.rewind_iterations(ctx)
        if iters > 0:
            recipe = imp_recipe(cfg)
            optimizer = recipe.optimizer(model.parameters())
            model.train()
            done, epoch = 0, 0
            while done < iters:
                for x, y in ctx.data.train.batches(cfg.batch_size, epoch=epoch, train=True, drop_last=True,
                                                   seed=seed_for(cfg.seed, "training-data")):
                    with hw.autocast():
                        loss = F.cross_entropy(model(x).float(), y)
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                    done += 1
                    if done >= iters:
                        break
                epoch += 1
        state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        seconds = time.perf_counter() - t0
        run.save_tensors(layout.IMP_REWIND, state, metadata={"seconds": repr(seconds), "iterations": str(iters)})
        return state, seconds

    def rewind_iterations(self, ctx: RunContext) -> int:
        cfg = ctx.config
        if not self.rewind:
            return 0
        if cfg.imp_rewind_iter is not None:
            return cfg.imp_rewind_iter
        per_epoch = max(1, len(ctx.data.train) // cfg.batch_size)
        return imp_reference(cfg.model).rewind_for(cfg.epochs * per_epoch)

    # --- reuse ------------------------------------------------------------------------------------
    def _import_levels(self, ctx: RunContext, counts: list[int]) -> None:
        """Copy the usable levels of ``--imp-from`` (and its rewind point) into this run."""
        src = Path(ctx.config.imp_from)
        if not (src / layout.CONFIG).is_file():
            raise GemdeployError(f"--imp-from {src}: not a gemdeploy run directory (no {layout.CONFIG})")
        # both read as options by name (a run of gemdeploy < 0.3 kept them flat in config.json)
        other = MineConfig.from_json(read_object(src / layout.CONFIG, {}), str(src / layout.CONFIG)).flat_json()
        mine = ctx.config.flat_json()
        diff = [k for k in SAME_TRAJECTORY if other.get(k) != mine.get(k)]
        if diff:
            raise GemdeployError(f"--imp-from {src}: its {', '.join(diff)} differ from this run's; "
                                 "IMP levels can only be reused along the same trajectory")
        if not (src / layout.IMP_REWIND).is_file():
            raise GemdeployError(f"--imp-from {src}: it has no {layout.IMP_LEVELS}/ (was it an IMP run?)")
        ctx.run.copy_in(src / layout.IMP_REWIND, layout.IMP_REWIND)
        for n, count in enumerate(counts[:-1]):
            path = src / layout.imp_level(n)
            if not path.is_file():
                break
            mask, _, record = _load_level(path)
            if mask.num_kept() != count:  # a partial level of the other run: not on this trajectory
                break
            ctx.run.copy_in(path, layout.imp_level(n))
            ctx.log({**record, "reused_from": str(src)})

    # --- the rounds -------------------------------------------------------------------------------
    def find_ticket(self, ctx: RunContext) -> Ticket:
        cfg = ctx.config
        names = list(prunable_weights(ctx.fresh_model()))
        frozen = [] if cfg.imp_prune_output else [output_layer(names)]
        sizes = {k: int(w.numel()) for k, w in prunable_weights(ctx.fresh_model()).items()}
        total = sum(sizes.values())
        counts = level_counts(total, cfg.density)
        if sum(sizes[k] for k in frozen) >= counts[-1]:
            raise GemdeployError(f"--sparsity {cfg.sparsity} keeps {counts[-1]:,} weights, fewer than the "
                                 f"{sum(sizes[k] for k in frozen):,} of the unpruned output layer; "
                                 "pass --imp-prune-output")
        if cfg.imp_from and not (ctx.run / layout.imp_level(0)).is_file():
            self._import_levels(ctx, counts)
        rewind_state, rewind_seconds = self.rewind_state(ctx)
        recipe = imp_recipe(cfg)

        # Continue after the last completed level on record (resume or --imp-from).
        mask, trained, levels = Mask.ones_like(ctx.fresh_model()).cpu(), None, []
        cumulative = rewind_seconds
        for n in range(len(counts) - 1):
            if not (ctx.run / layout.imp_level(n)).is_file():
                break
            mask, trained, record = _load_level(ctx.run / layout.imp_level(n))
            levels.append(record)
            cumulative = record["cumulative_time_s"]
        ctx.run.forget_metrics(lambda r: r.get("phase") == "imp" and r.get("level", -1) >= len(levels))
        start = len(levels)
        if start:
            mask = self.prune(mask, trained, counts[start], frozen)

        for n in range(start, len(counts) - 1):
            model = ctx.fresh_model(rewind_state if self.rewind or trained is None else trained)
            model, result = train_masked(ctx, mask, model, phase=f"imp-round-{n}", epochs=cfg.epochs, recipe=recipe,
                                         seed=seed_for(cfg.seed, "training-data"), batch_size=cfg.batch_size,
                                         fixed={"level": n})
            cumulative += result.seconds
            trained = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
            record = {"phase": "imp", "epoch": n + 1, "level": n, "density": mask.density(),
                      "kept_weights": mask.num_kept(), "val_acc": result.val.acc, "val_loss": result.val.loss,
                      "round_time_s": result.seconds, "cumulative_time_s": cumulative}
            _save_level(ctx, n, mask, trained, record)
            ctx.log(record)
            clear_checkpoint(ctx.run, f"imp-round-{n}")
            levels.append(record)
            mask = self.prune(mask, trained, counts[n + 1], frozen)
        return Ticket(mask.cpu(), None, {
            "mining_seconds": cumulative, "rounds": len(levels), "rewind_iterations": self.rewind_iterations(ctx),
            "rewind": self.rewind, "unpruned_layers": frozen, "round_recipe": recipe.describe(cfg.epochs),
            "training_epochs": len(levels) * cfg.epochs + self.rewind_iterations(ctx)
            / max(1, len(ctx.data.train) // cfg.batch_size),
            "levels": [{k: r[k] for k in ("level", "density", "val_acc", "cumulative_time_s")} for r in levels]})

    @staticmethod
    def prune(mask: Mask, trained: dict[str, torch.Tensor], keep: int, frozen: list[str]) -> Mask:
        """Keep the ``keep`` largest trained |w| among the weights still alive (global over the pruned layers,
        >= 1 per layer); the ``frozen`` layers stay whole and count towards ``keep``."""
        pruned = [k for k in mask if k not in frozen]
        budget = keep - sum(int(mask[k].numel()) for k in frozen)
        scores = {k: trained[k].abs().float().cpu() for k in pruned}
        out = global_topk(scores, budget, eligible={k: mask[k].cpu() for k in pruned})
        for k in frozen:
            out[k] = torch.ones_like(mask[k]).cpu()
        return Mask({k: out[k] for k in mask})

    # --- the ticket -------------------------------------------------------------------------------
    def ticket_training(self, ctx: RunContext) -> TicketTraining:
        """IMP: from the rewind point with the round recipe (the reference's last level is one more round)."""
        state, _ = self.rewind_state(ctx)
        return TicketTraining(state, imp_recipe(ctx.config), "rewind point")


class IMP(IterativeMagnitude):
    name = "imp"
    rewind = True
