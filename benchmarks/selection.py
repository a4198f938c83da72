"""Memory and time of the global selection every method ends a freezing round with (gemdeploy.sparsity.topk), against
the pooled top-k it replaced, side by side; and the peak memory of `gemdeploy mine` on a large torchvision model.

    .venv/bin/python -m benchmarks.selection             # vgg11's prunable layers (133M scores) -> BENCHMARKS.md
    .venv/bin/python -m benchmarks.selection --smoke     # toy sizes, nothing written (tests/test_masks.py runs it)

Each selection runs in its own process, so its peak resident memory (getrusage of that child) is its own; the two
alternate for --rounds rounds and the medians are compared. Both must keep the same scores: the same threshold, the
same number above it, nothing dropped above it (which of several tied entries at the threshold is kept may differ).
"""

from __future__ import annotations

import json
import math
import os
import resource
import statistics
import subprocess
import sys
import time

import torch
import typer

from benchmarks.report import ROOT, machine, markdown_table, write_section

SECTION = "selection"
KINDS = ("pooled top-k", "global_topk")


def pooled_topk(scores: dict[str, torch.Tensor], keep: int, eligible: dict[str, torch.Tensor]) -> dict:
    """The selection as gemdeploy had it before (commit 3810d50): each layer's eligible scores (others -inf), each
    layer's best reserved, then one top-k over the pooled copy, its indices scattered back."""
    flat = [torch.where(eligible[k].flatten() > 0, s.flatten(), torch.full_like(s.flatten(), -math.inf))
            for k, s in scores.items()]
    mask = {k: torch.zeros_like(s) for k, s in scores.items()}
    reserved = []
    for k, s in zip(scores, flat):
        top = torch.topk(s, 1).indices
        mask[k].view(-1)[top] = 1
        s = s.clone()
        s[top] = -math.inf
        reserved.append(s)
    remaining = keep - sum(int(m.sum()) for m in mask.values())
    top = torch.topk(torch.cat(reserved), remaining, sorted=False).indices
    offset = 0
    for k, s in zip(scores, reserved):
        mask[k].view(-1)[top[(top >= offset) & (top < offset + s.numel())] - offset] = 1
        offset += s.numel()
    return mask


def layer_sizes(model: str) -> list[int]:
    from torchvision import models

    from gemdeploy.sparsity.masks import prunable_weights

    with torch.device("meta"):  # shapes only: no memory
        net = models.get_model(model, weights=None)
    return [w.numel() for w in prunable_weights(net).values()]


def child(kind: str, sizes: list[int]) -> dict:
    from gemdeploy.sparsity.topk import global_topk

    gen = torch.Generator().manual_seed(0)
    scores = {f"layer{i}": torch.rand(n, generator=gen) for i, n in enumerate(sizes)}
    flags = {k: torch.ones_like(v) for k, v in scores.items()}
    keep = sum(sizes) // 2
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    mask = pooled_topk(scores, keep, flags) if kind == KINDS[0] else global_topk(scores, keep, eligible=flags)
    seconds = time.perf_counter() - start
    extra = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024
    # torch.rand has 2^24 values, so 133M draws tie: which of the tied entries at the threshold are kept may differ
    # (a top-k picks any, global_topk the first by position). What must agree: the threshold, how many are kept above
    # it, and that no dropped score is above it.
    threshold = min(float(s[m > 0].min()) for s, m in zip(scores.values(), mask.values()) if m.any())
    above = sum(int((s[m > 0] > threshold).sum()) for s, m in zip(scores.values(), mask.values()))
    dropped_max = max(float(s[m == 0].max()) for s, m in zip(scores.values(), mask.values()) if not m.all())
    digest = f"threshold {threshold!r}, {above} above it, highest dropped {dropped_max!r}"
    return {"kind": kind, "seconds": seconds, "extra_peak_bytes": extra, "kept": sum(int(m.sum()) for m in mask.values()),
            "digest": digest, "score_bytes": 4 * sum(sizes)}


def run_child(kind: str, model: str, smoke: bool) -> dict:
    out = subprocess.run([sys.executable, "-m", "benchmarks.selection", "--child", kind, "--model", model,
                          *(["--smoke"] if smoke else [])], cwd=ROOT, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def mine_peak(model: str, work: str) -> tuple[float, int]:
    """Peak resident memory of `gemdeploy mine` (Gem-Miner, unstructured) on ``model`` at 64x64, from wait4."""
    from benchmarks.zoo import data_file

    from pathlib import Path

    args = [sys.executable, "-m", "gemdeploy.cli", "mine", "--model", f"torchvision:{model}", "--data",
            f"{data_file(Path(work), 64)}:make_data", "--pattern", "unstructured", "--sparsity", "0.5", "--epochs", "1",
            "--finetune-epochs", "1", "--batch-size", "16", "--out", f"{work}/run", "--overwrite", "--quiet"]
    start = time.perf_counter()
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"mine failed: {proc.stderr.read().decode()[-500:]}")
    return time.perf_counter() - start, usage.ru_maxrss * 1024


def main(model: str = typer.Option("vgg11", help="torchvision model whose prunable layer sizes are selected over."),
         rounds: int = typer.Option(3, help="Alternating rounds of each selection."),
         smoke: bool = typer.Option(False, help="Toy sizes, one round, nothing written."),
         child_kind: str = typer.Option("", "--child", hidden=True)) -> None:
    sizes = [64, 4096, 100_000] if smoke else layer_sizes(model)
    if child_kind:
        print(json.dumps(child(child_kind, sizes)))
        return
    rounds = 1 if smoke else rounds
    results: dict[str, list[dict]] = {k: [] for k in KINDS}
    for r in range(rounds):
        for kind in (KINDS if r % 2 == 0 else KINDS[::-1]):
            results[kind].append(run_child(kind, model, smoke))
    same = len({x["digest"] for xs in results.values() for x in xs}) == 1
    rows, med = [], {}
    for kind, xs in results.items():
        med[kind] = (statistics.median(x["seconds"] for x in xs), statistics.median(x["extra_peak_bytes"] for x in xs))
        rows.append([kind, f"{med[kind][0]:.2f} s", f"{med[kind][1] / 1e9:.2f} GB",
                     f"{med[kind][1] / xs[0]['score_bytes']:.1f}", ", ".join(f"{x['seconds']:.2f}" for x in xs)])
    score_gb = results[KINDS[0]][0]["score_bytes"] / 1e9
    print(markdown_table(["selection", "median time", "median extra peak memory", "x the scores' bytes",
                          "every round (s)"], rows))
    print(f"same scores kept: {same} ({results[KINDS[0]][0]['digest']})")
    if not same:
        raise SystemExit("the two selections kept different scores: " + "; ".join(
            f"{k}: {xs[0]['digest']}" for k, xs in results.items()))
    if smoke:
        return
    import tempfile

    with tempfile.TemporaryDirectory() as work:
        mine_seconds, mine_bytes = mine_peak(model, work)
    body = "\n".join([
        "## Global selection: memory and time (the freezing rounds of every method)", "",
        f"Command: `nice .venv/bin/python -m benchmarks.selection --model {model} --rounds {rounds}`  ",
        f"Machine: {machine()}", "",
        f"Keep half of {sum(sizes) / 1e6:.0f}M random scores ({score_gb:.2f} GB, the prunable layers of torchvision "
        f"{model}), every entry eligible. Each selection in its own process, {rounds} alternating rounds, medians; "
        "extra peak = the process's peak resident memory during the selection above what it held before.", "",
        markdown_table(["selection", "median time", "median extra peak memory", "x the scores' bytes",
                        "every round (s)"], rows), "",
        f"global_topk / pooled top-k: **{med[KINDS[1]][0] / med[KINDS[0]][0]:.2f}x** the time, "
        f"**{med[KINDS[1]][1] / med[KINDS[0]][1]:.2f}x** the extra memory; the same scores kept (threshold, count above it, none dropped above it): **{same}**.", "",
        f"`gemdeploy mine --model torchvision:{model}` (Gem-Miner, unstructured, 48 random 64x64 images, 1 + 1 epochs): "
        f"peak resident memory **{mine_bytes / 1e9:.2f} GB** ({mine_seconds:.0f} s). Before this selection (commit "
        "3810d50) the same command peaked at 9.1 GB, measured by sampling the process's resident memory in an "
        "earlier run, not side by side; the freezing round was its peak.",
    ])
    write_section(SECTION, body)


if __name__ == "__main__":
    typer.run(main)
