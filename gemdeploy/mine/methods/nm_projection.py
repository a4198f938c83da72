"""N:M projection: the ticket of a run that starts from an existing one (``config.projected_from``): the source's
fine-tuned weights projected to N:M by magnitude inside its mask, trained briefly from those weights with the new
mask fixed. Not a `--method` choice: `gemdeploy compact RUN --pattern 2:4 --out NEW` starts such a run (and
`mine --out NEW --resume` continues it), and it keeps the source's --method name."""

from __future__ import annotations

import time

import torch

from gemdeploy.mine.context import RunContext
from gemdeploy.mine.methods.base import Method, Ticket, TicketTraining
from gemdeploy.mine.recipes import finetune_recipe
from gemdeploy.run import layout
from gemdeploy.run.artifacts import RunArtifacts
from gemdeploy.sparsity.masks import Mask, prunable_weights
from gemdeploy.sparsity.nm import nm_eligible_layers
from gemdeploy.sparsity.patterns import NM


def project_mask(model: torch.nn.Module, mask: Mask, n: int, m: int) -> Mask:
    """``mask`` restricted, in every N:M-eligible layer, to the N largest-|w| kept weights of each group of M."""
    eligible = nm_eligible_layers(model, m)
    weights = prunable_weights(model)
    out = Mask({k: v.clone() for k, v in mask.items()})
    for k in eligible:
        out[k] = mask[k] * NM.project(weights[k].detach().abs().cpu(), f"{n}:{m}", active=mask[k])
    return out


class NMProjection(Method):
    name = "nm-projection"
    patterns = (NM.name,)

    def find_ticket(self, ctx: RunContext) -> Ticket:
        started = time.perf_counter()
        cfg = ctx.config
        src = RunArtifacts.open(cfg.projected_from)
        n, m = NM.groups(cfg.nm)
        mask = project_mask(src.finetuned_model(), src.mask(), n, m)
        source = src.summary() if src.is_finished() else {}
        return Ticket(mask, None, {
            "projected_from": cfg.projected_from, "source_method": src.config.method,
            "source_pattern": src.config.pattern, "nm": f"{n}:{m}", "projection": "magnitude of fine-tuned weights",
            # the source's time to its ticket counts: this ticket is made from it
            "time_to_ticket_s": float(source.get("time_to_ticket_s", 0.0)) + time.perf_counter() - started,
            "training_epochs": float(source.get("ticket_epochs", 0.0)), "source_test_acc": source.get("test_acc"),
        })

    def ticket_training(self, ctx: RunContext) -> TicketTraining:
        """A short repair of the projection: from the source's fine-tuned weights, not the init."""
        src = RunArtifacts.open(ctx.config.projected_from)
        return TicketTraining(src.run.load_tensors(layout.WEIGHTS), finetune_recipe(ctx.config),
                              "the source's fine-tuned weights")
