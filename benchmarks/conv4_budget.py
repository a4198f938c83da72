"""Why does Gem-Miner fall short of IMP on Conv-4 / mnist5k (benchmarks/tickets.py, 4 mining epochs)? The mining
budget, across the tickets benchmark's seeds, read on the validation split (the test split is only reported):

  1. mining budget: 16 mining epochs instead of 4 (same 4 fine-tuning epochs), at 1.44% and 0.59%, every seed;
  2. freezing schedule: at 16 epochs, 3 freezing rounds (--freeze-period 5) instead of 15 (seed 0, 1.44%):
     does the number of rounds matter, or only the steps the scores get?
  3. the ticket's recipe: the 4-epoch mask fine-tuned at lr 0.1 instead of 0.01 (seed 0, 1.44%).

    nice .venv/bin/python -m benchmarks.conv4_budget --runs /path/to/runs   # reuses finished runs

The 4-epoch Gem-Miner and IMP rows are the tickets benchmark's runs (`--tickets-runs`), reused as they are.
"""

from __future__ import annotations

import dataclasses
import json
import statistics
import time
from pathlib import Path

import torch
import typer

from benchmarks.gem_miner_study import _mine
from benchmarks.report import ROOT, finished_summary, machine, markdown_table, write_section
from benchmarks.tickets import SUITE, run_dir
from gemdeploy.mine.pipeline import prepare
from gemdeploy.run.config import MineConfig

MODEL, DENSITIES, LONG = "conv4", (0.0144, 0.0059), 16
RESULTS = ROOT / "benchmarks" / "results"


def _mean_std(values: list[float]) -> str:
    if not values:
        return "-"
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.2%} ± {std:.2%}"


def main(
    runs: Path = typer.Option(RESULTS / "runs" / "conv4-budget", help="Where this study's runs go (reused)."),
    tickets_runs: Path = typer.Option(RESULTS / "runs" / "tickets", help="The tickets benchmark's runs (reference)."),
    threads: int = typer.Option(1, help="torch threads."),
    markdown: bool = typer.Option(True, help="Write the section of BENCHMARKS.md."),
    report_only: bool = typer.Option(False, "--report-only", help="Run nothing: report the runs that finished."),
) -> None:
    torch.set_num_threads(threads)
    started = time.perf_counter()
    spec = SUITE[MODEL]
    seeds, data = range(spec["seeds"]), spec["data"]
    base = MineConfig(model=MODEL, data=data, epochs=spec["epochs"], finetune_epochs=spec["finetune_epochs"],
                      device="cpu")
    prepared = None if report_only else prepare(base)

    rows, missing = [], []

    def row(label: str, density: float, summaries: list[dict | None]) -> None:
        done = [s for s in summaries if s is not None]
        if len(done) < len(summaries):
            missing.append(f"{label} at {density:.2%} ({len(summaries) - len(done)} of {len(summaries)} seeds)")
        if not done:
            return
        mined = [s["ticket"]["mined_val_acc"] for s in done if s.get("ticket", {}).get("mined_val_acc") is not None]
        rows.append({"variant": label, "density": density, "seeds": len(done), "ticket_epochs": done[0].get("ticket_epochs"),
                     "val": [s["val_acc"] for s in done], "test": [s["test_acc"] for s in done], "mined_val": mined})
        print(f"[{time.perf_counter() - started:7.0f} s] {label} d={density:.4f}: "
              f"val {_mean_std(rows[-1]['val'])} test {_mean_std(rows[-1]['test'])}", flush=True)

    def config(density: float, **change) -> MineConfig:
        cfg = dataclasses.replace(base, sparsity=round(1 - density, 10), **change)
        return cfg if report_only else cfg.resolve(train_size=len(prepared[1].train))

    for d in DENSITIES:
        for method in ("imp", "imp-ft"):
            row(f"{method} (tickets benchmark, {spec['imp_epochs']} epochs per round)", d,
                [finished_summary(run_dir(tickets_runs, MODEL, data, method, d, s)) for s in seeds])
        row(f"gem-miner, {spec['epochs']} + {spec['finetune_epochs']} (tickets benchmark)", d,
            [finished_summary(run_dir(tickets_runs, MODEL, data, "gem-miner", d, s)) for s in seeds])
        row(f"gem-miner, {LONG} + {spec['finetune_epochs']}", d,
            [_mine(config(d, epochs=LONG, seed=s), runs / f"mine-{LONG}-d{d:.4f}-s{s}", prepared, report_only)
             for s in seeds])
    d = DENSITIES[0]
    row(f"gem-miner, {LONG} + {spec['finetune_epochs']}, 3 freezing rounds (--freeze-period 5)", d,
        [_mine(config(d, epochs=LONG, freeze_period=5, seed=0), runs / f"mine-{LONG}-freeze-5-d{d:.4f}-s0",
               prepared, report_only)])
    row(f"gem-miner, {spec['epochs']} + {spec['finetune_epochs']}, ticket fine-tuned at lr 0.1", d,
        [_mine(config(d, finetune_lr=0.1, seed=0), runs / f"ftlr-0.1-d{d:.4f}-s0", prepared, report_only)])
    if missing:
        print(f"not finished (left out): {'; '.join(missing)}")
    result = {"machine": machine(), "rows": rows, "not_finished": missing, "wall_s": time.perf_counter() - started}
    (RESULTS / "conv4-budget.json").write_text(json.dumps(result, indent=2))
    if markdown:
        write_section("conv4-budget", render(result))


def render(result: dict) -> str:
    table = markdown_table(
        ["variant", "density", "seeds", "ticket epochs", "mask alone (val, before training)", "val acc", "test acc"],
        [[r["variant"], f"{r['density']:.2%}", r["seeds"], f"{r['ticket_epochs']:.0f}", _mean_std(r["mined_val"]),
          _mean_std(r["val"]), _mean_std(r["test"])] for r in result["rows"]])
    return "\n".join([
        "## Why Gem-Miner falls short on Conv-4 / mnist5k: the mining budget", "",
        "Command: `nice .venv/bin/python -m benchmarks.conv4_budget`  ",
        f"Machine: {result['machine']} (shared with other work)", "",
        "Variants of the tickets benchmark's Conv-4 Gem-Miner runs (batch 128, 4 fine-tuning epochs at lr 0.01 unless "
        "said); mean ± standard deviation over seeds; choices are read on the validation split, the test split is "
        "only reported. \"Mask alone\" is the mined mask on the signed-constant weights before any training.", "",
        table, "",
        *([f"Not finished in the time this machine had (left out): {'; '.join(result['not_finished'])}.", ""]
          if result.get("not_finished") else [])])


if __name__ == "__main__":
    typer.run(main)
