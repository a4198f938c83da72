"""`gemdeploy bench`: was the ticket worth it? Accuracy, latency and size against the dense and IMP runs."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import List, Optional

import typer

from gemdeploy.bench.config import BenchOptions
from gemdeploy.cli.errors import friendly_errors
from gemdeploy.options import cli_parameters, command, from_cli

_OWN = [
    inspect.Parameter("run", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=Path, default=typer.Argument(
        ..., help="The run to benchmark (typically a Gem-Miner ticket).")),
    inspect.Parameter("against", inspect.Parameter.KEYWORD_ONLY, annotation=List[Path], default=typer.Option(
        [], "--against", "-a", help="Runs to compare with (e.g. --method dense and imp runs); repeatable.")),
]
_TAIL = [
    inspect.Parameter("out", inspect.Parameter.KEYWORD_ONLY, annotation=Optional[Path], default=typer.Option(
        None, "--out", "-o", help="Where bench.json, report.md and plots go (default RUN/bench).")),
    inspect.Parameter("overwrite", inspect.Parameter.KEYWORD_ONLY, annotation=bool, default=typer.Option(
        False, "--overwrite", metavar="", help="Replace an existing report in --out.")),
    inspect.Parameter("json_out", inspect.Parameter.KEYWORD_ONLY, annotation=bool, default=typer.Option(
        False, "--json", metavar="", help="Print bench.json to stdout instead of tables.")),
]


@friendly_errors
def _bench(run: Path, **values) -> None:
    """Accuracy and latency of each run's artifacts on each available backend: table, JSON, report with plots."""
    import json

    from gemdeploy.bench.stage import bench_runs, report_folder
    from gemdeploy.run.rundir import RunDir

    opts = from_cli(BenchOptions, values).resolve()
    for path in [run, *values["against"]]:
        RunDir.open(path)  # a wrong path fails at once, before torch is imported
    out = report_folder(run, values["out"], values["overwrite"])

    from rich.console import Console

    from gemdeploy.bench.report import print_table

    console = Console(stderr=True)
    with console.status("benchmarking") as status:
        result, files = bench_runs([run, *values["against"]], opts, out, progress=lambda msg: status.update(msg),
                                   command=_command_line())
    if values["json_out"]:
        print((out / "bench.json").read_text())
    else:
        print_table(result)
        Console().print(f"wrote {', '.join(files)} to {out}")


def _command_line() -> str:
    """The command as the user typed it, for report.md."""
    import shlex

    from gemdeploy.cli import app

    return "gemdeploy " + " ".join(shlex.quote(str(a)) for a in (app.ARGV or ["bench"]))


bench = command(_bench, _OWN + cli_parameters(BenchOptions) + _TAIL)
