"""`gemdeploy bench`: was the ticket worth it? Accuracy, latency and size against the dense and IMP runs."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from gemdeploy.cli.errors import friendly_errors


@friendly_errors
def bench(
    run: Path = typer.Argument(..., help="The run to benchmark (typically a Gem-Miner ticket)."),
    against: List[Path] = typer.Option([], "--against", "-a", help="Runs to compare with (e.g. --method dense and imp runs); repeatable."),
    batch_size: List[int] = typer.Option([1, 64], "--batch-size", "-b", help="Batch sizes to time; repeatable."),
    backend: List[str] = typer.Option([], "--backend", help="Only these backends (pytorch-cpu, pytorch-cuda, pytorch-compile-cpu, "
                                                          "onnxruntime-cpu, onnxruntime-cuda, tensorrt); default: all available."),
    iters: int = typer.Option(50, help="Timed calls per measurement."),
    warmup: int = typer.Option(10, help="Untimed warm-up calls."),
    threads: int = typer.Option(0, help="CPU threads for PyTorch and ONNX Runtime (0: PyTorch's default)."),
    compile: bool = typer.Option(False, "--compile", help="Also time torch.compile'd PyTorch models."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Where bench.json, report.md and plots go (default RUN/bench)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing report in --out."),
    json_out: bool = typer.Option(False, "--json", help="Print bench.json to stdout instead of tables."),
) -> None:
    """Accuracy and latency of each run's artifacts on each available backend: table, JSON, report with plots."""
    import json

    from rich.console import Console

    from gemdeploy.bench.measure import BenchOptions, measure
    from gemdeploy.bench.report import print_table, write_outputs
    from gemdeploy.errors import GemdeployError
    from gemdeploy.machine import describe

    if any(b < 1 for b in batch_size) or iters < 1 or warmup < 0 or threads < 0:
        raise GemdeployError("--batch-size and --iters must be >= 1, --warmup and --threads >= 0")
    out = out or run / "bench"
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise GemdeployError(f"{out} already holds a report; pass --overwrite to replace it or --out to write elsewhere")
    opts = BenchOptions(batch_sizes=sorted(set(batch_size)), iters=iters, warmup=warmup, threads=threads,
                        compile=compile, backends=backend or None)
    console = Console(stderr=True)
    with console.status("benchmarking") as status:
        result = measure([run, *against], opts, progress=lambda msg: status.update(msg))
    files = write_outputs(result, out, describe())
    if json_out:
        print(json.dumps({**result, "machine": describe()}, indent=2))
    else:
        print_table(result)
        Console().print(f"wrote {', '.join(files)} to {out}")
