"""The mine stage as a list of resumable steps: initialize -> find the ticket -> train the ticket -> summarize.
Each step's result is a file in the run directory (gemdeploy.run.layout); a resumed run skips every step whose file
exists and continues the interrupted one from its last per-epoch checkpoint. Compaction is the next stage, chained
after this one by gemdeploy.stages (which `gemdeploy mine`, gemdeploy.api and tune run)."""

from __future__ import annotations

import time

import torch

from pathlib import Path

from gemdeploy.data import data_for
from gemdeploy.data.splits import DataBundle
from gemdeploy.errors import GemdeployError
from gemdeploy.mine.memory import require_memory
from gemdeploy.mine.context import RunContext
from gemdeploy.mine.health import ticket_warnings
from gemdeploy.mine.methods import METHODS
from gemdeploy.mine.methods.nm_projection import NMProjection
from gemdeploy.models import model_for
from gemdeploy.models.user import check_model
from gemdeploy.progress import Reporter
from gemdeploy.run import layout
from gemdeploy.run.config import MineConfig
from gemdeploy.run.rundir import RunDir
from gemdeploy.sparsity import PATTERNS
from gemdeploy.sparsity.masks import Mask
from gemdeploy.train import distributed as dist
from gemdeploy.models.init import given_weights, initialize
from gemdeploy.train.loop import Hardware, evaluate
from gemdeploy.train.masked import train_masked
from gemdeploy.train.phase import clear_checkpoint
from gemdeploy.train.seeds import seed_for
from gemdeploy.user_code import is_live, is_spec


def prepare(cfg: MineConfig, *, init_needed: bool = True) -> tuple[Hardware, DataBundle]:
    """Load the data onto the device: everything that can fail on bad input, before the run directory is touched
    (a user's model is built and tried on the data's shape, and --init-from weights are checked against it unless
    the run already holds its initial weights: ``init_needed=False``)."""
    hw = Hardware.resolve(cfg.device, cfg.compile, cuda_graph=cfg.cuda_graph)
    data = data_for(cfg, download=cfg.download)
    check_init = init_needed and cfg.init_from is not None
    if is_spec(cfg.model) or check_init:
        model = model_for(cfg, data.input_shape, data.num_classes)
        if check_init:
            given_weights(cfg.init_from, cfg.init_sha256, model, cfg.model)
        if is_spec(cfg.model):
            check_model(model, data.input_shape, data.num_classes, cfg.model)
    return hw, data.to(hw.device, hw.channels_last)


def initial_state(cfg: MineConfig, run: RunDir, data: DataBundle) -> dict[str, torch.Tensor]:
    """The weights every method starts from: the --init-from weights, else the method's reference init (seeded)."""
    if run.has(layout.INIT):
        return run.load_tensors(layout.INIT)
    torch.manual_seed(seed_for(cfg.seed, "init"))
    model = model_for(cfg, data.input_shape, data.num_classes)
    if cfg.init_from is not None:
        state = given_weights(cfg.init_from, cfg.init_sha256, model, cfg.model)
    else:
        state = {k: v.clone() for k, v in initialize(model, cfg.init).state_dict().items()}
    run.save_tensors(layout.INIT, state)
    return state


def mine_run(out, cfg: MineConfig | None, *, resume: bool = False, overwrite: bool = False,
             reporter: Reporter | None = None) -> tuple[RunDir, dict]:
    """`gemdeploy mine` without the printing: a new run of ``cfg`` in ``out`` (validated), or the run in ``out``
    resumed from its config.json; returns (run directory, summary)."""
    if resume:
        run = RunDir.create(out, resume=True, overwrite=overwrite)
        cfg = MineConfig.from_json(run.read_json(layout.CONFIG), str(run / layout.CONFIG))
        check_resumable(cfg, dist.world_size())
    elif cfg is None:
        raise ValueError("a new run needs a configuration")
    # Bad data or a bad model fails here, before the run directory is touched.
    prepared = prepare(cfg, init_needed=not (resume and run.has(layout.INIT)))
    cfg = cfg.resolve(dist.world_size(), train_size=len(prepared[1].train))
    if not resume:
        run = RunDir.create(out, overwrite=overwrite)
        dist.barrier()  # the other ranks start once rank 0 has made the directory
    summary = run_mine(cfg, run, resume=resume, reporter=reporter, prepared=prepared)
    return run, summary


def check_resumable(saved: MineConfig, world_size: int) -> None:
    """A resumed data-parallel run must keep its world size: the shards and the per-rank batch depend on it."""
    if saved.world_size != world_size:
        raise GemdeployError(f"this run was started with {saved.world_size} process(es); "
                             f"resume it with the same number (now {world_size})")


def ticket_method(cfg: MineConfig):
    """What finds this run's ticket: the N:M projection of the run it starts from (`compact --pattern 2:4`), else
    its --method."""
    return NMProjection() if cfg.projected_from else METHODS.get(cfg.method)()


def find_ticket(ctx: RunContext, method) -> tuple[Mask, dict]:
    run = ctx.run
    if run.has(layout.MASK) and run.has(layout.TICKET):
        return Mask.load(run / layout.MASK), run.read_object(layout.TICKET, {"time_to_ticket_s": float})
    t0 = time.perf_counter()
    ticket = method.find_ticket(ctx)
    prior = ticket.info.get("time_to_ticket_s", ticket.info.get("mining_seconds"))
    info = {**ticket.info, "time_to_ticket_s": prior if prior is not None else time.perf_counter() - t0}
    dist.check_agreement(ticket.mask, "ticket mask")
    if ticket.scores is not None:
        run.save_tensors(layout.SCORES, ticket.scores)
    run.save_mask(layout.MASK, ticket.mask)
    run.write_json(layout.TICKET, info)
    clear_checkpoint(run, "mine")
    return ticket.mask, info


def train_ticket(ctx: RunContext, method, mask: Mask) -> tuple[torch.nn.Module, dict]:
    """The method's ticket training (shared fine-tuning from init, or IMP's round recipe from its rewind point)."""
    run, cfg = ctx.run, ctx.config
    if run.has(layout.WEIGHTS) and run.has(layout.FINETUNE):
        model = ctx.fresh_model(run.load_tensors(layout.WEIGHTS))
        return model.eval(), run.read_object(layout.FINETUNE, {"finetune_time_s": float, "val_acc": float})
    training = method.ticket_training(ctx)
    model, result = train_masked(ctx, mask, ctx.fresh_model(training.start), phase="finetune",
                                 epochs=cfg.finetune_epochs, recipe=training.recipe,
                                 seed=seed_for(cfg.seed, "training-data"), batch_size=cfg.batch_size)
    info = {"finetune_time_s": result.seconds, "val_acc": result.val.acc, "starts_from": training.starts_from,
            "recipe": training.recipe.describe(cfg.finetune_epochs), "recipe_json": training.recipe.to_json()}
    run.save_tensors(layout.WEIGHTS, model.state_dict())
    run.write_json(layout.FINETUNE, info)
    clear_checkpoint(run, "finetune")
    return model, info


def run_mine(cfg: MineConfig, run: RunDir, *, resume: bool = False, reporter: Reporter | None = None,
             prepared: tuple[Hardware, DataBundle] | None = None) -> dict:
    """Run (or resume) a whole `mine` job in ``run`` with the resolved ``cfg``; returns the summary."""
    started = time.perf_counter()
    hw, data = prepared or prepare(cfg)
    reporter = reporter or Reporter(enabled=dist.is_main())
    run.write_json(layout.CONFIG, cfg.to_json())
    run.write_json(layout.MODEL, {"model": cfg.model, "input_shape": list(data.input_shape),
                                  "num_classes": data.num_classes,
                                  # a user's model keeps its BatchNorm as it defines it
                                  "affine_bn": None if is_spec(cfg.model) else False})
    ctx = RunContext(cfg, data, hw, run, reporter, initial_state(cfg, run, data), resume=resume)
    kernels24 = sparse24_benefit(ctx) if PATTERNS.get(cfg.pattern).groups(cfg.nm) is not None else None
    if kernels24:
        reporter.log(kernels24["line"])
    method = ticket_method(cfg)
    if not run.has(layout.MASK):
        require_memory(method.weight_copies(cfg), ctx.init_state, hw.device, f"mining {cfg.model} with {cfg.method}")
    try:
        mask, ticket_info = find_ticket(ctx, method)
        model, ft_info = train_ticket(ctx, method, mask)
        test = evaluate(model.eval(), data.test, hw)
    finally:
        reporter.close()

    target = 0.0 if cfg.method == "dense" else cfg.sparsity
    summary = {
        "method": cfg.method, "model": cfg.model, "data": cfg.data, "pattern": cfg.pattern, "seed": cfg.seed,
        "init": cfg.init or f"weights {Path(cfg.init_from).name if not is_live(cfg.init_from) else 'given'}",
        "init_from": cfg.init_from, "init_sha256": cfg.init_sha256, "target_sparsity": target, "sparsity": mask.sparsity(), "density": mask.density(),
        "kept_weights": mask.num_kept(), "prunable_weights": mask.num_total(),
        "test_acc": test.acc if data.real else None, "val_acc": ft_info["val_acc"] if data.real else None,
        "synthetic_data": not data.real,
        "time_to_ticket_s": ticket_info["time_to_ticket_s"], "finetune_time_s": ft_info["finetune_time_s"],
        "total_time_s": ticket_info["time_to_ticket_s"] + ft_info["finetune_time_s"],
        "wall_time_this_invocation_s": time.perf_counter() - started,
        "epochs": cfg.epochs, "finetune_epochs": cfg.finetune_epochs,
        "ticket_epochs": ticket_info.get("training_epochs", 0),
        "ticket_training": {"starts_from": ft_info.get("starts_from"), "recipe": ft_info.get("recipe")},
        "device": str(hw.device), "layout": hw.describe(), "world_size": dist.world_size(),
        "ticket": {k: v for k, v in ticket_info.items() if k != "time_to_ticket_s"},
        "compaction": None,  # the compact stage fills it in (gemdeploy.stages)
    }
    if kernels24:
        summary["sparse24_kernels"] = {k: v for k, v in kernels24.items() if k != "layers"}
    summary["warnings"] = ticket_warnings(summary, mask, data.num_classes, ticket_info.get("mined_val_acc")) \
        if data.real else []
    run.write_json(layout.SUMMARY, summary)
    return summary


def sparse24_benefit(ctx: RunContext) -> dict:
    """Which layers of a --pattern 2:4 ticket 2:4 sparse GPU kernels could ever speed up: the layers the pattern
    covers, whose GEMM shapes the kernels take (said up front, before mining)."""
    from gemdeploy.sparsity.kernels24 import model_benefit
    from gemdeploy.sparsity.nm import nm_eligible_layers, parse_nm

    model = ctx.fresh_model()
    covered = nm_eligible_layers(model, parse_nm(ctx.config.nm)[1])
    holds = {name: f"{name}.weight" in covered for name, _ in model.named_modules()}
    return model_benefit(model, ctx.data.input_shape, holds, not_holding="outside the 2:4 pattern (first or grouped conv)")
