"""Physical compaction of a fine-tuned ticket: dead and unread channels removed (gemdeploy.sparsity.channels), the
remaining sparse weights stored so the file tracks the nonzeros (gemdeploy.compact.sparse_store).

The run directory gets
    compact.json          the record: removal steps, per-layer channels/density/N:M, totals before/after
    compact.safetensors   the compacted weights, sparse-encoded
The compacted model is rebuilt from the architecture (model.json) plus the record's steps, then loaded from
compact.safetensors: no pickles. In eval mode it computes the same logits as the masked model.
"""

from __future__ import annotations

import copy
import math
import time

import torch
from torch import nn

from gemdeploy.run import layout
from gemdeploy.run.artifacts import RunArtifacts
from gemdeploy.sparsity.channels import ChannelAnalysisError, compact_channels, replay_steps
from gemdeploy.errors import GemdeployError
from gemdeploy.models import load_weights
from gemdeploy.numerics import explained_by_rounding, rounding_sensitivity, unreproducible
from gemdeploy.sparsity import PATTERNS
from gemdeploy.sparsity.masks import PRUNABLE_TYPES
from gemdeploy.sparsity.nm import nm_eligible_layers, parse_nm, satisfies_nm
from gemdeploy.compact.sparse_store import load_sparse, save_sparse

RECORD, WEIGHTS = layout.COMPACT_RECORD, layout.COMPACT_WEIGHTS
RECORD_VERSION = 1
EXACT_REL_TOL = 1e-4  # the compacted model's logits stay within this x the largest |logit| (fp32 summation order)


def compact_model(model: nn.Module, input_shape: tuple[int, ...], round_to: int,
                  nm: tuple[int, int] | None = None) -> tuple[nn.Module, list[dict]]:
    """A compacted copy of ``model`` (its pruned weights already exactly zero) and the removal steps; with ``nm``,
    layers that hold the N:M pattern still hold it afterwards."""
    if round_to < 1:
        raise GemdeployError(f"--round-to must be >= 1, got {round_to}")
    compacted = copy.deepcopy(model).eval()
    steps = compact_channels(compacted, input_shape, round_to, nm)
    return compacted, steps


@torch.no_grad()
def layer_macs(model: nn.Module, input_shape: tuple[int, ...]) -> dict[str, tuple[int, int]]:
    """Per conv/linear layer: (dense MACs, MACs over nonzero weights) for one input."""
    out: dict[str, tuple[int, int]] = {}
    hooks = []
    for name, mod in model.named_modules():
        if isinstance(mod, PRUNABLE_TYPES):
            def hook(m, inp, res, name=name):
                positions = res[0].numel() // res.shape[1] if isinstance(m, nn.Conv2d) else 1
                out[name] = (positions * m.weight.numel(), positions * int(m.weight.count_nonzero()))
            hooks.append(mod.register_forward_hook(hook))
    was_training = model.training
    model.eval()
    try:
        model(torch.zeros(1, *input_shape, device=next(model.parameters()).device))
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return out


def model_totals(model: nn.Module, input_shape: tuple[int, ...]) -> dict:
    macs = layer_macs(model, input_shape)
    return {
        "params": sum(p.numel() for p in model.parameters()),
        "nonzero_params": sum(int(p.count_nonzero()) for p in model.parameters()),
        "macs": sum(d for d, _ in macs.values()),
        "nonzero_macs": sum(s for _, s in macs.values()),
    }


def layer_records(before: nn.Module, after: nn.Module, n: int, m: int) -> list[dict]:
    eligible = nm_eligible_layers(before, m)
    after_mods = dict(after.named_modules())
    rows = []
    for name, mod in before.named_modules():
        if not isinstance(mod, PRUNABLE_TYPES):
            continue
        new = after_mods[name]
        w = new.weight.detach()
        rows.append({
            "layer": name, "type": type(mod).__name__,
            "in_before": int(mod.weight.shape[1] * getattr(mod, "groups", 1)), "out_before": int(mod.weight.shape[0]),
            "in_after": int(w.shape[1] * getattr(new, "groups", 1)), "out_after": int(w.shape[0]),
            "density_before": float(mod.weight.count_nonzero()) / mod.weight.numel(),
            "density_after": float(w.count_nonzero()) / max(1, w.numel()),
            "nm_eligible": f"{name}.weight" in eligible,
            "nm_holds": satisfies_nm(w, n, m),
        })
    return rows


def _max_logit_diff(a: nn.Module, b: nn.Module, x: torch.Tensor) -> tuple[float, float]:
    with torch.no_grad():
        ya, yb = a.eval()(x), b.eval()(x)
    return float((ya - yb).abs().max()), float(ya.abs().max())


def check_same_logits(model: nn.Module, compacted: nn.Module, input_shape: tuple[int, ...],
                      what: str) -> tuple[float, float]:
    """(max |logit diff|, logit scale) of ``compacted`` against ``model`` on 8 standard-normal images; GemdeployError
    when over the tolerance, saying whether the network's own rounding already moves its logits that much."""
    gen = torch.Generator().manual_seed(0)
    images = torch.randn(8, *input_shape, generator=gen).to(next(model.parameters()).device)
    diff, scale = _max_logit_diff(model, compacted, images)
    tolerance = EXACT_REL_TOL * max(scale, 1e-6)
    if math.isfinite(diff) and diff <= tolerance:
        return diff, scale
    what = f"{what} changed its logits by {diff:.3g} (more than {tolerance:.3g}); nothing written"
    sensitivity = rounding_sensitivity(model, images)
    if explained_by_rounding(diff, tolerance, sensitivity):  # the check cannot tell this network's rounding apart
        raise GemdeployError(f"{what}: {unreproducible(sensitivity, scale)}")
    # Only channels proven to carry zeros (or never read) go; a model where that proof fails is not written.
    raise GemdeployError(f"{what}: one of its layers does not map a zero channel to zero (please report it with "
                         "the model)")


def compact_run(artifacts: RunArtifacts, round_to: int) -> dict:
    """Compact a fine-tuned run in place (writes compact.safetensors, then compact.json) and return the record."""
    started = time.perf_counter()
    run, shape = artifacts.run, tuple(artifacts.input_shape)
    model = artifacts.finetuned_model()
    mask = artifacts.mask()
    mask.check_matches(model)
    mask.apply_(model)  # the ticket's pruned weights are zero by construction; make sure of it
    n, m = parse_nm(artifacts.config.nm)
    # An N:M ticket's groups must survive: channel removal may not shift them.
    keep_nm = PATTERNS.get(artifacts.config.pattern).compaction_constraint(artifacts.config.nm)
    left_whole = None
    try:
        compacted, steps = compact_model(model, shape, round_to, keep_nm)
    except ChannelAnalysisError as exc:
        # No channel is provably removable without the analysis: the sparse weights are still stored compactly.
        compacted, steps, left_whole = copy.deepcopy(model).eval(), [], f"Torch-Pruning's channel analysis {exc}"
    diff, scale = check_same_logits(model, compacted, shape, f"compacting {artifacts.config.model}")
    save_sparse(run / WEIGHTS, compacted.state_dict())
    dense_bytes = (run / layout.WEIGHTS).stat().st_size
    record = {
        "version": RECORD_VERSION, "model": artifacts.config.model, "input_shape": list(shape),
        "num_classes": artifacts.num_classes, "round_to": round_to, "nm": f"{n}:{m}", "steps": steps,
        "layers": layer_records(model, compacted, n, m),
        "before": model_totals(model, shape), "after": model_totals(compacted, shape),
        "file_bytes": {"dense": dense_bytes, "compact": (run / WEIGHTS).stat().st_size},
        "check": {"max_abs_logit_diff": diff, "logit_scale": scale, "inputs": "8 standard-normal images"},
        "channels_left_whole": left_whole,
        "seconds": time.perf_counter() - started,
    }
    run.write_json(RECORD, record)
    return record


def compact_stage(artifacts: RunArtifacts, round_to: int, overwrite: bool = False) -> dict:
    """The compact stage as every caller runs it (`mine`'s last step, `gemdeploy compact`, Run.compact): the record
    in place when it was made with the same ``round_to`` (skipped: done), a refusal for another ``round_to``
    unless ``overwrite``, else a new compaction."""
    if artifacts.run.has(RECORD) and artifacts.run.has(WEIGHTS) and not overwrite:
        old = artifacts.run.read_object(RECORD, {"before": dict, "after": dict, "file_bytes": dict})
        if old.get("round_to") != round_to:
            raise GemdeployError(f"{artifacts.run.path} is already compacted with --round-to {old.get('round_to')}; "
                                 f"pass --overwrite to redo it with --round-to {round_to}")
        return old
    return compact_run(artifacts, round_to)


def summary_totals(record: dict) -> dict:
    """What summary.json keeps of a compaction record (its totals)."""
    return {"before": record["before"], "after": record["after"], "file_bytes": record["file_bytes"],
            "round_to": record["round_to"], "channels_left_whole": record.get("channels_left_whole")}


def load_record(artifacts: RunArtifacts) -> dict:
    if not (artifacts.run.has(RECORD) and artifacts.run.has(WEIGHTS)):
        raise GemdeployError(f"{artifacts.run.path} has not been compacted yet (no {RECORD}); "
                             f"run `gemdeploy mine --out {artifacts.run.path} --resume` or `gemdeploy compact`")
    record = artifacts.run.read_json(RECORD)
    if record.get("version") != RECORD_VERSION or "steps" not in record:
        raise GemdeployError(f"{artifacts.run / RECORD} is not a compaction record this gemdeploy can read")
    return record


def load_compacted_model(artifacts: RunArtifacts) -> nn.Module:
    """The compacted model of a run, rebuilt from model.json + compact.json + compact.safetensors, in eval mode."""
    record = load_record(artifacts)
    shape = tuple(artifacts.input_shape)
    model = artifacts.architecture().eval()
    try:
        replay_steps(model, shape, record["steps"])
    except (KeyError, IndexError, ValueError, TypeError) as exc:
        raise GemdeployError(f"{artifacts.run / RECORD} does not fit {artifacts.config.model}: {exc}") from None
    state = load_sparse(artifacts.run / WEIGHTS)
    try:
        load_weights(model, state)
    except RuntimeError as exc:
        raise GemdeployError(f"{artifacts.run / WEIGHTS} does not fit the compaction record: "
                             f"{str(exc).splitlines()[0]}") from None
    return model.eval()
