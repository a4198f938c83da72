"""`gemdeploy sanity RUN`: layer-wise mask shuffle, weight re-initialization and score inversion."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from gemdeploy.cli.errors import friendly_errors


@friendly_errors
def sanity(
    run: Path = typer.Argument(..., help="A finished `gemdeploy mine` run directory."),
    checks: str = typer.Option("shuffle,reinit,invert", help="Comma-separated: shuffle, reinit, invert."),
    finetune_epochs: int = typer.Option(None, help="Fine-tuning epochs per check (default: the run's own)."),
    device: str = typer.Option("auto", help="auto, cpu or cuda."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
    json_out: bool = typer.Option(False, "--json", help="Print sanity.json instead of a table."),
) -> None:
    """Frankle et al. (2021) sanity checks: does the ticket depend on which weights it keeps?"""
    import json

    from gemdeploy.progress import Reporter
    from gemdeploy.sanity import run_sanity

    wanted = tuple(c.strip() for c in checks.split(",") if c.strip())
    result = run_sanity(run, wanted, finetune_epochs=finetune_epochs, device=device, reporter=Reporter(enabled=not quiet))
    if json_out:
        print(json.dumps(result, indent=2))
        return
    table = Table(title=f"gemdeploy sanity -> {run / 'sanity.json'} ({result['method']}, {result['model']}/{result['data']})")
    for col in ("ticket", "density", "test accuracy", "vs original"):
        table.add_column(col, justify="left" if col == "ticket" else "right")
    orig = result["original"]
    table.add_row("original", f"{orig['density']:.4%}", f"{orig['test_acc']:.2%}", "")
    for name, r in result["checks"].items():
        table.add_row(name, f"{r['density']:.4%}", f"{r['test_acc']:.2%}", f"{r['delta_test_acc']:+.2%}")
    for name in result["skipped"]:
        table.add_row(name, "-", "n/a (the method saved no scores)", "")
    Console().print(table)
