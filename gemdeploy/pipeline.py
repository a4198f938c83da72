"""`gemdeploy mine`: initialize -> find the ticket -> fine-tune -> summarize, resumable at every step."""

from __future__ import annotations

import time

import torch

from gemdeploy import distributed as dist
from gemdeploy.config import PATTERNS, MineConfig
from gemdeploy.context import RunContext
from gemdeploy.data import DATASETS, DataBundle, load_data
from gemdeploy.errors import GemdeployError, unknown_choice
from gemdeploy.init import INITS, initialize
from gemdeploy.masks import Mask
from gemdeploy.miners import METHODS
from gemdeploy.models import MODELS, build_model
from gemdeploy.progress import Reporter
from gemdeploy.rundir import RunDir
from gemdeploy.training import Hardware, evaluate


def validate(cfg: MineConfig) -> None:
    """Every check that needs no data or model, so bad input fails in a second with one clear line."""
    if cfg.model not in MODELS:
        raise unknown_choice("model", cfg.model, MODELS.names())
    if cfg.data not in DATASETS:
        raise unknown_choice("data set", cfg.data, DATASETS.names())
    if cfg.method not in METHODS:
        raise unknown_choice("method", cfg.method, METHODS.names())
    if cfg.init not in INITS:
        raise unknown_choice("init", cfg.init, INITS)
    if cfg.pattern not in PATTERNS:
        raise unknown_choice("pattern", cfg.pattern, PATTERNS)
    if cfg.pattern not in METHODS.get(cfg.method).patterns:
        raise GemdeployError(f"method {cfg.method} does not support --pattern {cfg.pattern} "
                             f"(it supports: {', '.join(METHODS.get(cfg.method).patterns)})")
    if not (0.0 <= cfg.sparsity < 1.0):
        raise GemdeployError(f"--sparsity must be in [0, 1) (the fraction of weights removed), got {cfg.sparsity}")
    for name in ("epochs", "finetune_epochs", "batch_size"):
        if getattr(cfg, name) < (0 if name == "finetune_epochs" else 1):
            raise GemdeployError(f"--{name.replace('_', '-')} must be positive, got {getattr(cfg, name)}")
    if cfg.channel_sparsity is not None:
        if cfg.pattern == "channel" or cfg.method != "gem-miner":
            raise GemdeployError("--channel-sparsity combines a channel ticket with --pattern unstructured or 2:4 "
                                 "(Gem-Miner only); with --pattern channel, --sparsity is the channel fraction")
        if not (0.0 <= cfg.channel_sparsity < 1.0):
            raise GemdeployError(f"--channel-sparsity must be in [0, 1), got {cfg.channel_sparsity}")
    if cfg.round_to < 1:
        raise GemdeployError(f"--round-to must be >= 1, got {cfg.round_to}")
    from gemdeploy.nm import parse_nm

    parse_nm(cfg.nm)
    if cfg.lam is not None and cfg.lam < 0:
        raise GemdeployError(f"--lam must be >= 0, got {cfg.lam}")


def _initial_state(cfg: MineConfig, run: RunDir, data) -> dict[str, torch.Tensor]:
    if run.has("init.safetensors"):
        return run.load_tensors("init.safetensors")
    torch.manual_seed(cfg.seed)
    model = initialize(build_model(cfg.model, data.input_shape, data.num_classes), cfg.init)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    if dist.is_main():
        run.save_tensors("init.safetensors", state)
    return state


def prepare(cfg: MineConfig) -> tuple[Hardware, DataBundle]:
    """Validate the config and load the data onto the device: everything that can fail on bad input,
    done before the run directory is touched."""
    validate(cfg)
    hw = Hardware.resolve(cfg.device, cfg.compile)
    return hw, load_data(cfg.data, cfg.data_dir, cfg.download).to(hw.device, hw.channels_last)


def _check_world_size(cfg: MineConfig, resume: bool) -> None:
    """A resumed data-parallel run must keep its world size: the shards and the per-rank batch depend on it."""
    current = dist.world_size()
    if resume and cfg.extra.get("world_size", 1) != current:
        raise GemdeployError(f"this run was started with {cfg.extra.get('world_size', 1)} process(es); "
                             f"resume it with the same number (now {current})")
    cfg.extra["world_size"] = current


def run_mine(cfg: MineConfig, run: RunDir, *, resume: bool = False, reporter: Reporter | None = None,
             prepared: tuple[Hardware, DataBundle] | None = None) -> dict:
    """Run (or resume) a whole `mine` job in ``run``; returns the summary written to summary.json."""
    started = time.perf_counter()
    hw, data = prepared or prepare(cfg)
    reporter = reporter or Reporter(enabled=dist.is_main())
    _check_world_size(cfg, resume)
    if dist.is_main():
        run.write_json("config.json", cfg.to_json())
        run.write_json("model.json", {"model": cfg.model, "input_shape": list(data.input_shape),
                                      "num_classes": data.num_classes, "affine_bn": False})
    ctx = RunContext(cfg, data, hw, run, reporter, _initial_state(cfg, run, data), resume=resume)
    method = METHODS.get(cfg.method)()
    try:
        # 1. The ticket.
        if run.has("mask.safetensors") and run.has("ticket.json"):
            mask, ticket_info = Mask.load(run / "mask.safetensors"), run.read_json("ticket.json")
        else:
            t0 = time.perf_counter()
            ticket = method.find_ticket(ctx)
            prior = ticket.info.get("mining_seconds")
            ticket_info = {**ticket.info, "time_to_ticket_s": prior if prior is not None else time.perf_counter() - t0}
            mask = ticket.mask
            dist.check_agreement(mask, "ticket mask")
            if dist.is_main():
                if ticket.scores is not None:
                    run.save_tensors("scores.safetensors", ticket.scores)
                mask.save(run / "mask.safetensors")
                run.write_json("ticket.json", ticket_info)
            ctx.clear_checkpoint("mine")

        # 2. Fine-tuning with the mask fixed, from the initial weights.
        if run.has("weights.safetensors") and run.has("finetune.json"):
            model = ctx.fresh_model()
            model.load_state_dict(run.load_tensors("weights.safetensors"))
            ft_info = run.read_json("finetune.json")
        else:
            from gemdeploy.finetune import train_masked

            model, val, seconds = train_masked(ctx, mask, phase="finetune", epochs=cfg.finetune_epochs,
                                               lr=cfg.finetune_lr, weight_decay=cfg.weight_decay)
            ft_info = {"finetune_time_s": seconds, "val_acc": val.acc}
            if dist.is_main():
                run.save_tensors("weights.safetensors", model.state_dict())
                run.write_json("finetune.json", ft_info)
            ctx.clear_checkpoint("finetune")
        model.eval()
        test = evaluate(model, data.test, hw)
    finally:
        reporter.close()

    # 3. Compaction (resumable: a finished compact.json is kept).
    compaction = _compact(cfg, run) if dist.is_main() else None

    target = 0.0 if cfg.method == "dense" else cfg.sparsity
    summary = {
        "method": cfg.method, "model": cfg.model, "data": cfg.data, "pattern": cfg.pattern, "seed": cfg.seed,
        "target_sparsity": target, "sparsity": mask.sparsity(), "density": mask.density(),
        "kept_weights": mask.num_kept(), "prunable_weights": mask.num_total(),
        "test_acc": test.acc if data.real else None, "val_acc": ft_info["val_acc"] if data.real else None,
        "synthetic_data": not data.real,
        "time_to_ticket_s": ticket_info["time_to_ticket_s"], "finetune_time_s": ft_info["finetune_time_s"],
        "total_time_s": ticket_info["time_to_ticket_s"] + ft_info["finetune_time_s"],
        "wall_time_this_invocation_s": time.perf_counter() - started,
        "epochs": cfg.epochs, "finetune_epochs": cfg.finetune_epochs, "device": str(hw.device),
        "world_size": dist.world_size(),
        "ticket": {k: v for k, v in ticket_info.items() if k != "time_to_ticket_s"},
        "compaction": compaction,
    }
    if dist.is_main():
        run.write_json("summary.json", summary)
    return summary


def _compact(cfg: MineConfig, run: RunDir) -> dict:
    """Compact the fine-tuned ticket into the run directory; returns the record's totals for summary.json."""
    from gemdeploy.artifacts import RunArtifacts
    from gemdeploy.compaction import RECORD, compact_run

    record = run.read_json(RECORD) if run.has(RECORD) and run.has("compact.safetensors") else None
    if record is None:
        record = compact_run(RunArtifacts.open(run.path), cfg.round_to)
    return {"before": record["before"], "after": record["after"], "file_bytes": record["file_bytes"],
            "round_to": record["round_to"]}
