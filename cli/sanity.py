"""`gemdeploy sanity RUN`: layer-wise mask shuffle, weight re-initialization and score inversion."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from gemdeploy.cli.errors import friendly_errors


@friendly_errors
def sanity(
    run: Path = typer.Argument(..., help="A finished `gemdeploy mine` run directory."),
    checks: str = typer.Option("shuffle,reinit,invert", help="Comma-separated: shuffle, reinit, invert."),
    finetune_epochs: Optional[int] = typer.Option(None, help="Epochs per check, >= 1 (default: the run's own); "
                                                  "the original ticket is retrained with it when it differs."),
    device: str = typer.Option("auto", help="auto, cpu or cuda."),
    quiet: bool = typer.Option(False, "--quiet", "-q", metavar="", help="No progress bar."),
    json_out: bool = typer.Option(False, "--json", metavar="", help="Print sanity.json instead of a table."),
) -> None:
    """Frankle et al. (2021) sanity checks: does the ticket depend on which weights it keeps?"""
    import json

    from rich.console import Console
    from rich.table import Table

    from gemdeploy.errors import GemdeployError
    from gemdeploy.mine.sanity import CHECKS
    from gemdeploy.options import at_least, optional, require

    require("--finetune-epochs", finetune_epochs, optional(at_least(1)))
    wanted = tuple(c.strip() for c in checks.split(",") if c.strip())
    bad = [c for c in wanted if c not in CHECKS]
    if bad or not wanted:
        raise GemdeployError(f"unknown sanity check {bad[0] if bad else checks!r}; choose from: {', '.join(CHECKS)}")

    from gemdeploy.mine.sanity import run_sanity
    from gemdeploy.progress import Reporter

    result = run_sanity(run, wanted, finetune_epochs=finetune_epochs, device=device, reporter=Reporter(enabled=not quiet))
    if json_out:
        print(json.dumps(result, indent=2))
        return
    table = Table(title=f"gemdeploy sanity -> {run / 'sanity.json'} ({result['method']}, {result['model']}/{result['data']})")
    for col in ("ticket", "epochs", "density", "test accuracy", "vs original", "what changed"):
        table.add_column(col, justify="left" if col in ("ticket", "what changed") else "right")
    orig = result["original"]
    table.add_row("original" + (" (retrained)" if orig.get("retrained") else ""), str(orig["epochs"]),
                  f"{orig['density']:.4%}", f"{orig['test_acc']:.2%}", "", "")
    for name, r in result["checks"].items():
        table.add_row(name, str(r["epochs"]), f"{r['density']:.4%}", f"{r['test_acc']:.2%}",
                      f"{r['delta_test_acc'] * 100:+.2f} pt", r.get("how", ""))
    for name in result["skipped"]:
        table.add_row(name, "-", "-", "n/a", "", "the method saved no scores")
    Console().print(table)
    print(f"every ticket trained from {result['ticket_training']['starts_from']}: {result['ticket_training']['recipe']}")
