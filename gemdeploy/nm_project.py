"""Turn an existing (unstructured or dense) run into an N:M run: project its fine-tuned weights to N:M by
magnitude, fine-tune briefly with the new mask fixed, then compact. The result is a new run directory; the
source run is only read.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import torch

from gemdeploy.artifacts import RunArtifacts
from gemdeploy.masks import Mask, prunable_weights
from gemdeploy.nm import nm_eligible_layers, nm_mask_from_scores, parse_nm
from gemdeploy.rundir import RunDir


def project_mask(model: torch.nn.Module, mask: Mask, n: int, m: int) -> Mask:
    """``mask`` restricted, in every N:M-eligible layer, to the N largest-|w| kept weights of each group of M."""
    eligible = nm_eligible_layers(model, m)
    weights = prunable_weights(model)
    out = Mask({k: v.clone() for k, v in mask.items()})
    for k in eligible:
        out[k] = mask[k] * nm_mask_from_scores(weights[k].detach().abs().cpu(), n, m, active=mask[k])
    return out


def project_run(source: str | Path, out: str | Path, *, nm: str, finetune_epochs: int, round_to: int,
                overwrite: bool = False, device: str | None = None, quiet: bool = True) -> dict:
    """Write a new run in ``out`` holding ``source`` projected to N:M, fine-tuned and compacted; returns its summary."""
    from gemdeploy.context import RunContext
    from gemdeploy.data import load_data
    from gemdeploy.finetune import train_masked
    from gemdeploy.pipeline import run_mine
    from gemdeploy.progress import Reporter
    from gemdeploy.training import Hardware

    started = time.perf_counter()
    src = RunArtifacts.open(source)
    RunDir.check_new(out, overwrite=overwrite)  # before any slow work
    n, m = parse_nm(nm)
    if finetune_epochs < 0:
        from gemdeploy.errors import GemdeployError

        raise GemdeployError(f"--finetune-epochs must be >= 0, got {finetune_epochs}")
    model = src.finetuned_model()
    mask = project_mask(model, src.mask(), n, m)
    source_summary = src.summary() if src.run.has("summary.json") else {}
    cfg = dataclasses.replace(src.config, pattern="2:4", nm=f"{n}:{m}", finetune_epochs=finetune_epochs,
                              round_to=round_to, device=device or src.config.device,
                              extra={**src.config.extra, "projected_from": str(Path(source).resolve())})
    hw = Hardware.resolve(cfg.device, cfg.compile)
    data = load_data(cfg.data, cfg.data_dir, False).to(hw.device, hw.channels_last)

    run = RunDir.create(out, overwrite=overwrite)
    run.save_tensors("init.safetensors", src.run.load_tensors("init.safetensors"))
    mask.save(run / "mask.safetensors")
    run.write_json("ticket.json", {
        "projected_from": str(Path(source).resolve()), "source_method": src.config.method,
        "source_pattern": src.config.pattern, "nm": f"{n}:{m}", "projection": "magnitude of fine-tuned weights",
        "time_to_ticket_s": float(source_summary.get("time_to_ticket_s", 0.0)) + time.perf_counter() - started,
        "source_test_acc": source_summary.get("test_acc"),
    })
    run.write_json("config.json", cfg.to_json())
    reporter = Reporter(enabled=not quiet)
    ctx = RunContext(cfg, data, hw, run, reporter, run.load_tensors("init.safetensors"))
    # Start from the source's fine-tuned weights, not the init: this is a short repair of the projection.
    start = hw.prepare(model.train())
    tuned, val, seconds = train_masked(ctx, mask, phase="finetune", epochs=finetune_epochs, lr=cfg.finetune_lr,
                                       weight_decay=cfg.weight_decay, model=start)
    run.save_tensors("weights.safetensors", tuned.state_dict())
    run.write_json("finetune.json", {"finetune_time_s": seconds, "val_acc": val.acc})
    ctx.clear_checkpoint("finetune")
    # The remaining steps (evaluate, compact, summarize) are mine's own, resumed on the files just written.
    return run_mine(cfg, run, resume=True, reporter=reporter, prepared=(hw, data))
