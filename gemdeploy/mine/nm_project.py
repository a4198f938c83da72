"""Turn an existing (unstructured or dense) run into an N:M run: project its fine-tuned weights to N:M by
magnitude, fine-tune briefly with the new mask fixed, then compact. The result is a new run directory; the
source run is only read.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import torch

from gemdeploy.errors import GemdeployError
from gemdeploy.mine.context import RunContext
from gemdeploy.mine.pipeline import prepare, run_mine
from gemdeploy.mine.recipes import finetune_recipe
from gemdeploy.progress import Reporter
from gemdeploy.run import layout
from gemdeploy.run.artifacts import RunArtifacts
from gemdeploy.run.rundir import RunDir
from gemdeploy.sparsity.masks import Mask, prunable_weights
from gemdeploy.sparsity.nm import nm_eligible_layers, parse_nm
from gemdeploy.sparsity.patterns import NM
from gemdeploy.train.masked import train_masked
from gemdeploy.train.phase import clear_checkpoint
from gemdeploy.train.seeds import seed_for


def project_mask(model: torch.nn.Module, mask: Mask, n: int, m: int) -> Mask:
    """``mask`` restricted, in every N:M-eligible layer, to the N largest-|w| kept weights of each group of M."""
    eligible = nm_eligible_layers(model, m)
    weights = prunable_weights(model)
    out = Mask({k: v.clone() for k, v in mask.items()})
    for k in eligible:
        out[k] = mask[k] * NM.project(weights[k].detach().abs().cpu(), f"{n}:{m}", active=mask[k])
    return out


def project_run(source: str | Path, out: str | Path, *, nm: str, finetune_epochs: int, round_to: int,
                overwrite: bool = False, device: str | None = None, quiet: bool = True) -> dict:
    """Write a new run in ``out`` holding ``source`` projected to N:M, fine-tuned and compacted; returns its summary."""
    started = time.perf_counter()
    src = RunArtifacts.open(source)
    RunDir.check_new(out, overwrite=overwrite)  # before any slow work
    n, m = parse_nm(nm)
    if finetune_epochs < 0:
        raise GemdeployError(f"--finetune-epochs must be >= 0, got {finetune_epochs}")
    model = src.finetuned_model()
    mask = project_mask(model, src.mask(), n, m)
    source_summary = src.summary() if src.is_finished() else {}
    cfg = dataclasses.replace(src.config, pattern=NM.name, nm=f"{n}:{m}", finetune_epochs=finetune_epochs,
                              round_to=round_to, device=device or src.config.device,
                              projected_from=str(Path(source).resolve())).resolve(src.config.world_size)
    hw, data = prepare(cfg, init_needed=False)  # the source run's initial weights are copied

    run = RunDir.create(out, overwrite=overwrite, description="run (projected to N:M)")
    init = src.run.load_tensors(layout.INIT)
    run.save_tensors(layout.INIT, init)
    run.save_mask(layout.MASK, mask)
    run.write_json(layout.TICKET, {
        "projected_from": str(Path(source).resolve()), "source_method": src.config.method,
        "source_pattern": src.config.pattern, "nm": f"{n}:{m}", "projection": "magnitude of fine-tuned weights",
        "time_to_ticket_s": float(source_summary.get("time_to_ticket_s", 0.0)) + time.perf_counter() - started,
        "training_epochs": float(source_summary.get("ticket_epochs", 0.0)),
        "source_test_acc": source_summary.get("test_acc"),
    })
    run.write_json(layout.CONFIG, cfg.to_json())
    reporter = Reporter(enabled=not quiet)
    ctx = RunContext(cfg, data, hw, run, reporter, init)
    # Start from the source's fine-tuned weights, not the init: this is a short repair of the projection.
    recipe = finetune_recipe(cfg)
    tuned, result = train_masked(ctx, mask, hw.prepare(model.train()), phase="finetune", epochs=finetune_epochs,
                                 recipe=recipe, seed=seed_for(cfg.seed, "training-data"), batch_size=cfg.batch_size)
    reporter.close()
    run.save_tensors(layout.WEIGHTS, tuned.state_dict())
    run.write_json(layout.FINETUNE, {"finetune_time_s": result.seconds, "val_acc": result.val.acc,
                                     "starts_from": "the source's fine-tuned weights",
                                     "recipe": recipe.describe(finetune_epochs), "recipe_json": recipe.to_json()})
    clear_checkpoint(run, "finetune")
    # The remaining steps (evaluate, compact, summarize) are mine's own, resumed on the files just written.
    return run_mine(cfg, run, resume=True, reporter=Reporter(enabled=False), prepared=(hw, data))
