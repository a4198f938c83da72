"""The sanity checks of Frankle et al. (2021) on a finished ticket, as the Gem-Miner authors run them.

Each check changes one thing about the ticket and trains it exactly as the method trains its own ticket (same
starting weights, same recipe, same number of epochs):

- ``shuffle``: the mask permuted at random inside every layer (layer-wise densities kept exactly);
- ``reinit``: the same mask on freshly drawn kaiming-normal weights;
- ``invert``: for a method with a mining loop (Gem-Miner), mining again with the freezing order reversed (the
  highest |p| frozen out first: the authors' `--invert-sanity-check`), each layer frozen down to the original
  ticket's count in that layer so the layer-wise densities stay those of the ticket; for score-at-init methods and edge-popup,
  per layer the lowest-scoring weights instead of the highest, as many as the ticket keeps there.

A real ticket loses accuracy under these; a method that only found good layer-wise densities does not. With a
``--finetune-epochs`` other than the run's, the original ticket is retrained with that budget too, so every
check is compared with like. Each check works in ``RUN/sanity/<check>/`` (per-epoch checkpoints: an interrupted
check resumes, a finished one is reused) and ``RUN/sanity.json`` merges the results of every call.
"""

from __future__ import annotations

import dataclasses
import time

import torch

from gemdeploy.errors import GemdeployError
from gemdeploy.mine.context import RunContext
from gemdeploy.mine.methods import METHODS
from gemdeploy.progress import Reporter
from gemdeploy.run import layout
from gemdeploy.run.artifacts import RunArtifacts
from gemdeploy.run.rundir import RunDir, sweep_debris
from gemdeploy.sparsity.masks import Mask
from gemdeploy.models.init import initialize
from gemdeploy.train.loop import Hardware, evaluate
from gemdeploy.train.masked import train_masked
from gemdeploy.train.phase import clear_checkpoint
from gemdeploy.train.seeds import generator, seed_for

CHECKS = ("shuffle", "reinit", "invert")


def shuffle_mask(mask: Mask, gen: torch.Generator) -> Mask:
    """A uniformly random permutation of each layer's mask: every layer keeps exactly as many weights."""
    out = Mask()
    for k, m in mask.items():
        flat = m.flatten()
        out[k] = flat[torch.randperm(flat.numel(), generator=gen)].view_as(m).clone()
    return out


def invert_mask(mask: Mask, scores: dict[str, torch.Tensor]) -> Mask:
    """Per layer, keep the lowest-scoring weights, as many as ``mask`` keeps in that layer."""
    out = Mask()
    for k, m in mask.items():
        if k not in scores or tuple(scores[k].shape) != tuple(m.shape):
            raise GemdeployError(f"scores.safetensors does not match the mask at {k}")
        n = int(m.count_nonzero())
        flat = torch.zeros(m.numel(), dtype=torch.float32)
        if n:
            flat[torch.topk(-scores[k].float().flatten().cpu(), n, sorted=False).indices] = 1.0
        out[k] = flat.view_as(m)
    return out


def kaiming_state(art: RunArtifacts, seed: int) -> dict[str, torch.Tensor]:
    """Freshly drawn kaiming-normal weights for the run's architecture (the authors' re-init)."""
    torch.manual_seed(seed)
    model = initialize(art.architecture(), "kaiming-normal")
    return {k: v.clone() for k, v in model.state_dict().items()}


def _recipe_key(epochs: int, recipe) -> dict:
    return {"epochs": epochs, **recipe.to_json()}


def _train_variant(ctx: RunContext, sub: RunDir, name: str, mask: Mask, start: dict, recipe, epochs: int,
                   data, hw) -> dict:
    key = _recipe_key(epochs, recipe)
    if sub.has(layout.SANITY_RESULT):
        done = sub.read_json(layout.SANITY_RESULT)
        if isinstance(done, dict) and done.get("recipe") == key:
            return done
    cfg = ctx.config
    sub_ctx = dataclasses.replace(ctx, run=sub, resume=True)
    started = time.perf_counter()
    model, result = train_masked(sub_ctx, mask, sub_ctx.fresh_model(start), phase=name, epochs=epochs, recipe=recipe,
                                 seed=seed_for(cfg.seed, "training-data"), batch_size=cfg.batch_size)
    test = evaluate(model, data.test, hw)
    record = {"test_acc": test.acc, "val_acc": result.val.acc, "density": mask.density(), "epochs": epochs,
              "layer_densities": mask.layer_densities(), "train_time_s": result.seconds,
              "wall_s": time.perf_counter() - started, "recipe": key}
    sub.write_json(layout.SANITY_RESULT, record)
    clear_checkpoint(sub, name)
    return record


def _inverted_ticket(ctx: RunContext, method, sub: RunDir, art: RunArtifacts, mask: Mask) -> tuple[Mask, str] | None:
    if method.mines:
        if sub.has(layout.MASK):
            return Mask.load(sub / layout.MASK), "re-mined, freezing the highest |p| first"
        cfg = dataclasses.replace(ctx.config, invert_freezing=True)
        targets = {k: int(m.count_nonzero()) for k, m in mask.items()}
        ticket = method.find_ticket(dataclasses.replace(ctx, config=cfg, run=sub, resume=True, layer_targets=targets))
        sub.save_mask(layout.MASK, ticket.mask)
        clear_checkpoint(sub, "mine")
        return ticket.mask, "re-mined, freezing the highest |p| first"
    if art.run.has(layout.SCORES):
        return invert_mask(mask, art.run.load_tensors(layout.SCORES)), "lowest scores per layer"
    return None  # the method keeps no scores (random, IMP, smart-ratio)


def run_sanity(path, checks: tuple[str, ...] = CHECKS, *, finetune_epochs: int | None = None, device: str = "auto",
               reporter: Reporter | None = None) -> dict:
    """Run the checks on the finished run at ``path``; returns (and writes) the merged sanity.json record."""
    for c in checks:
        if c not in CHECKS:
            raise GemdeployError(f"unknown sanity check {c!r}; choose from: {', '.join(CHECKS)}")
    art = RunArtifacts.open(path)
    summary = art.summary()
    cfg = art.config.resolve(art.config.world_size)
    if cfg.method == "dense":
        raise GemdeployError(f"{art.run.path} is a dense run: there is no ticket to sanity-check")
    epochs = cfg.finetune_epochs if finetune_epochs is None else finetune_epochs
    if epochs < 1:
        raise GemdeployError(f"--finetune-epochs must be positive, got {epochs}")
    hw = Hardware.resolve(device)
    data = art.data(hw.device)
    if not data.real:
        raise GemdeployError(f"{art.run.path} was trained on synthetic data: accuracy comparisons mean nothing")
    reporter = reporter or Reporter(enabled=False)
    method = METHODS.get(cfg.method)()
    init = art.run.load_tensors(layout.INIT)
    ctx = RunContext(cfg, data, hw, art.run, reporter, init, resume=True)
    training = method.ticket_training(ctx)
    mask = art.mask()
    root = art.run.sub(layout.SANITY_DIR)
    if root.path.is_dir():
        for folder in [root.path, *[p for p in root.path.iterdir() if p.is_dir()]]:
            sweep_debris(folder)  # temp files of an interrupted check
    previous = art.run.read_json(layout.SANITY) if art.run.has(layout.SANITY) else {}
    results = dict(previous.get("checks", {})) if isinstance(previous, dict) else {}
    skipped = []
    try:
        if epochs == cfg.finetune_epochs:
            original = {"test_acc": summary.get("test_acc"), "val_acc": summary.get("val_acc"), "epochs": epochs,
                        "density": summary["density"], "retrained": False}
        else:  # compare like with like: the original ticket trained with the checks' budget
            original = {**_train_variant(ctx, root.sub(f"original-{epochs}ep"), "original", mask, training.start,
                                         training.recipe, epochs, data, hw), "retrained": True}
        for check in checks:
            sub = root.sub(check)
            if check == "shuffle":
                variant, start, how = shuffle_mask(mask, generator(cfg.seed, "sanity-shuffle")), training.start, \
                    "mask permuted inside every layer"
            elif check == "reinit":
                variant, start, how = mask, kaiming_state(art, seed_for(cfg.seed, "sanity-reinit")), \
                    "same mask, fresh kaiming-normal weights"
            else:
                inverted = _inverted_ticket(ctx, method, sub, art, mask)
                if inverted is None:
                    skipped.append(check)
                    continue
                (variant, how), start = inverted, training.start
            record = _train_variant(ctx, sub, check, variant, start, training.recipe, epochs, data, hw)
            results[check] = {**record, "how": how, "original_test_acc": original["test_acc"],
                              "delta_test_acc": record["test_acc"] - (original["test_acc"] or 0.0)}
    finally:
        reporter.close()
    out = {"run": art.run.path.name, "method": cfg.method, "model": cfg.model, "data": cfg.data,
           "finetune_epochs": epochs, "ticket_training": {"starts_from": training.starts_from,
                                                          "recipe": training.recipe.describe(epochs)},
           "original": original, "checks": results, "skipped": skipped}
    art.run.write_json(layout.SANITY, out)
    return out
