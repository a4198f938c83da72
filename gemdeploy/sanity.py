"""The sanity checks of Frankle et al. (2021) on a finished ticket.

Each check changes one thing about the ticket and fine-tunes it with the run's own recipe:

- ``shuffle``: the mask is permuted at random inside every layer (the layer-wise densities are kept
  exactly, the positions are lost);
- ``reinit``: the same mask on freshly re-initialized weights (same scheme, another seed);
- ``invert``: per layer, keep the *lowest*-scoring weights, as many as the ticket keeps there (only
  where the method saved scores.safetensors).

A real ticket loses accuracy under these; a method that only found good layer-wise densities does not.
Each check runs in ``RUN/sanity/<check>/`` (metrics, per-epoch checkpoints: an interrupted check resumes)
and the results go to ``RUN/sanity.json``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from gemdeploy.artifacts import RunArtifacts
from gemdeploy.context import RunContext
from gemdeploy.errors import GemdeployError
from gemdeploy.init import initialize
from gemdeploy.masks import Mask
from gemdeploy.models import build_model
from gemdeploy.progress import Reporter
from gemdeploy.rundir import RunDir
from gemdeploy.training import Hardware, evaluate

CHECKS = ("shuffle", "reinit", "invert")
REINIT_SEED_OFFSET = 1000


def shuffle_mask(mask: Mask, generator: torch.Generator) -> Mask:
    """A uniformly random permutation of each layer's mask: every layer keeps exactly as many weights."""
    out = Mask()
    for k, m in mask.items():
        flat = m.flatten()
        out[k] = flat[torch.randperm(flat.numel(), generator=generator)].view_as(m).clone()
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


def reinit_state(art: RunArtifacts, seed: int) -> dict[str, torch.Tensor]:
    """Fresh initial weights with the run's scheme and a different seed."""
    torch.manual_seed(seed)
    model = initialize(build_model(art.config.model, art.input_shape, art.num_classes), art.config.init)
    return {k: v.clone() for k, v in model.state_dict().items()}


@dataclass
class Variant:
    name: str
    mask: Mask
    init_state: dict[str, torch.Tensor]


def variants(art: RunArtifacts, checks: tuple[str, ...]) -> list[Variant]:
    cfg = art.config
    mask = art.mask()
    init = art.run.load_tensors("init.safetensors")
    out = []
    for check in checks:
        if check == "shuffle":
            out.append(Variant(check, shuffle_mask(mask, torch.Generator().manual_seed(cfg.seed + 101)), init))
        elif check == "reinit":
            out.append(Variant(check, mask, reinit_state(art, cfg.seed + REINIT_SEED_OFFSET)))
        elif check == "invert":
            if not art.run.has("scores.safetensors"):
                continue  # the method keeps no scores (random, IMP, smart-ratio, dense)
            out.append(Variant(check, invert_mask(mask, art.run.load_tensors("scores.safetensors")), init))
        else:
            raise GemdeployError(f"unknown sanity check {check!r}; choose from: {', '.join(CHECKS)}")
    return out


def run_sanity(path, checks: tuple[str, ...] = CHECKS, *, finetune_epochs: int | None = None, device: str = "auto",
               reporter: Reporter | None = None) -> dict:
    """Run the checks on the finished run at ``path``; returns (and writes) the sanity.json record."""
    from gemdeploy.finetune import train_masked

    art = RunArtifacts.open(path)
    if not art.run.has("summary.json"):
        raise GemdeployError(f"{art.run.path} is not finished (no summary.json); finish it with `gemdeploy mine --resume`")
    summary = art.summary()
    cfg = art.config
    if cfg.method == "dense":
        raise GemdeployError(f"{art.run.path} is a dense run: there is no ticket to sanity-check")
    epochs = cfg.finetune_epochs if finetune_epochs is None else finetune_epochs
    if epochs < 1:
        raise GemdeployError(f"--finetune-epochs must be positive, got {epochs}")
    chosen = variants(art, checks)
    hw = Hardware.resolve(device)
    data = art.data(hw.device)
    if not data.real:
        raise GemdeployError(f"{art.run.path} was trained on synthetic data: accuracy comparisons mean nothing")
    reporter = reporter or Reporter(enabled=False)
    results = {}
    try:
        for v in chosen:
            sub = RunDir(art.run.path / "sanity" / v.name)
            sub.path.mkdir(parents=True, exist_ok=True)
            key = {"epochs": epochs, "finetune_lr": cfg.finetune_lr, "weight_decay": cfg.weight_decay}
            if sub.has("result.json") and sub.read_json("result.json").get("recipe") == key:
                results[v.name] = sub.read_json("result.json")
                continue
            ctx = RunContext(cfg, data, hw, sub, reporter, v.init_state, resume=True)
            started = time.perf_counter()
            model, val, seconds = train_masked(ctx, v.mask, phase="finetune", epochs=epochs, lr=cfg.finetune_lr,
                                               weight_decay=cfg.weight_decay)
            test = evaluate(model, data.test, hw)
            record = {"test_acc": test.acc, "val_acc": val.acc, "density": v.mask.density(),
                      "layer_densities": v.mask.layer_densities(), "finetune_time_s": seconds,
                      "wall_s": time.perf_counter() - started, "recipe": key}
            sub.write_json("result.json", record)
            ctx.clear_checkpoint("finetune")
            results[v.name] = record
    finally:
        reporter.close()
    original = {"test_acc": summary.get("test_acc"), "val_acc": summary.get("val_acc"), "density": summary["density"],
                "finetune_epochs": cfg.finetune_epochs}
    out = {"run": str(art.run.path), "method": cfg.method, "model": cfg.model, "data": cfg.data,
           "finetune_epochs": epochs, "original": original,
           "checks": {k: {**r, "delta_test_acc": r["test_acc"] - (original["test_acc"] or 0.0)} for k, r in results.items()},
           "skipped": [c for c in checks if c not in results]}
    art.run.write_json("sanity.json", out)
    return out
