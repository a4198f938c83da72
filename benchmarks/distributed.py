"""Data-parallel mining on CPU (Gloo, 2 processes) against the single-process run, over seeds.

    .venv/bin/python -m benchmarks.distributed [--seeds 3] [--epochs 20]

Both reach the same density by construction; the question is whether the accuracy of the 2-process run
(global batch 128 split across ranks, per-rank BatchNorm statistics) stays within the seed spread.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
import time

import typer

from benchmarks.report import machine, markdown_table, write_section


def run(nproc: int, seed: int, epochs: int, out: str) -> dict:
    args = [sys.executable, "-m", "gemdeploy.cli", "mine", "--model", "lenet300", "--data", "mnist5k",
            "--sparsity", "0.986", "--epochs", str(epochs), "--finetune-epochs", str(epochs), "--seed", str(seed),
            "--device", "cpu", "--nproc-per-node", str(nproc), "--quiet", "--json", "--out", out]
    start = time.perf_counter()
    proc = subprocess.run(args, capture_output=True, text=True, check=True)
    summary = json.loads(proc.stdout[proc.stdout.index("{"):])
    summary["wall_s"] = time.perf_counter() - start
    return summary


def main(seeds: int = 3, epochs: int = 20, write: bool = True) -> None:
    rows, results = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        for nproc in (1, 2):
            runs = [run(nproc, s, epochs, f"{tmp}/p{nproc}-s{s}") for s in range(seeds)]
            accs = [r["test_acc"] for r in runs]
            results[nproc] = runs
            rows.append([nproc, f"{runs[0]['sparsity']:.4%}", f"{statistics.mean(accs):.2%}",
                         f"{statistics.stdev(accs):.2%}" if seeds > 1 else "-",
                         ", ".join(f"{a:.1%}" for a in accs),
                         f"{statistics.mean(r['total_time_s'] for r in runs):.1f} s"])
            print(nproc, accs)
    body = (f"## Data-parallel mining (Gloo, CPU)\n\nCommand: `.venv/bin/python -m benchmarks.distributed --seeds {seeds} "
            f"--epochs {epochs}` (lenet300, mnist5k, 98.6% sparsity, {epochs} mining + {epochs} fine-tuning epochs, "
            f"global batch 128)  \nMachine: {machine()}\n\n"
            + markdown_table(["processes", "sparsity", "test acc (mean)", "std", "per seed", "mine+finetune time"], rows)
            + "\n\nOn two cores the two processes compete for the same cores, so the time column shows overhead, "
              "not scaling; the point is that the distributed run reaches the same density and an accuracy within "
              "the seed spread.")
    if write:
        write_section("distributed-cpu", body)


if __name__ == "__main__":
    typer.run(main)
