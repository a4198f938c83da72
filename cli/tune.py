"""`gemdeploy tune`: the fastest ticket within an accuracy budget, on the runtime it will run on."""

from __future__ import annotations

import inspect
from pathlib import Path

import typer

from gemdeploy.cli.errors import friendly_errors
from gemdeploy.options import cli_parameters, command, from_cli
from gemdeploy.tune.config import TuneOptions

_OWN = [
    inspect.Parameter("out", inspect.Parameter.KEYWORD_ONLY, annotation=Path, default=typer.Option(
        ..., "--out", "-o", help="The tune directory: a run directory per candidate, tune.json, tune.png.")),
]
_TAIL = [
    inspect.Parameter("resume", inspect.Parameter.KEYWORD_ONLY, annotation=bool, default=typer.Option(
        False, "--resume", metavar="", help="Continue an interrupted tune in --out, reusing finished candidates "
        "(the goal and --budget may change).")),
    inspect.Parameter("json_out", inspect.Parameter.KEYWORD_ONLY, annotation=bool, default=typer.Option(
        False, "--json", metavar="", help="Print tune.json's result instead of tables.")),
    inspect.Parameter("quiet", inspect.Parameter.KEYWORD_ONLY, annotation=bool,
                      default=typer.Option(False, "--quiet", "-q", metavar="", help="No progress messages.")),
]


@friendly_errors
def _tune(out: Path, **values) -> None:
    """Search patterns x densities for the fastest model within --max-drop of dense (or the most accurate one that
    meets --target-speedup / --target-latency-ms), measured on each --backend; choose on validation."""
    import json

    opts = from_cli(TuneOptions, values).resolve()  # bad options fail before anything heavy is imported
    from rich.console import Console

    from gemdeploy.tune.runner import TUNE_JSON, TUNE_PLOT, tune

    console = Console(stderr=True)
    quiet = values["quiet"] or values["json_out"]
    with console.status("tuning") as status:
        def progress(msg: str) -> None:
            if not quiet:
                status.update(msg)
                console.print(f"[dim]{msg}[/dim]")

        state = tune(opts, out, resume=values["resume"], progress=progress)
    if values["json_out"]:
        print(json.dumps(state["result"], indent=2))
        return
    print_result(state["result"])
    Console().print(f"wrote {TUNE_JSON}, {TUNE_PLOT} and a run directory per candidate to {out}")


def print_result(result: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    pick = result["pick"]
    front = {(o["name"], o["backend"]) for o in result["pareto_front"]}
    table = Table(title=f"gemdeploy tune: {result['goal']}")
    for col in ("candidate", "backend", "val acc", "drop (pts)", "95% CI", "latency ms", "vs dense", "MB", ""):
        table.add_column(col, justify="left" if col in ("candidate", "backend", "") else "right")
    for o in sorted(result["options"], key=lambda o: (o["backend"], o["latency_ms"])):
        mark = ("pick " if (o["name"], o["backend"]) == (pick["name"], pick["backend"]) else "") + \
            ("front" if (o["name"], o["backend"]) in front else "")
        size = f"{o['file_bytes'] / 1e6:.2f}" if o.get("file_bytes") else "-"
        interval = o.get("val_drop_interval")
        table.add_row(o["name"], o["backend"], f"{100 * o['val_acc']:.2f}%", f"{o['val_drop_points']:+.2f}",
                      f"{interval[0]:+.1f}..{interval[1]:+.1f}" if interval else "-", f"{o['latency_ms']:.3g}",
                      f"{o['speedup']:.2f}x" if o.get("speedup") else "-", size, mark)
    console = Console()
    console.print(table)
    verdict = "Pick" if pick["meets_goal"] else "Goal not reached; closest"
    test = (f"test accuracy {100 * pick['pick_test_acc']:.2f}% vs dense {100 * pick['dense_test_acc']:.2f}% "
            f"on {pick['backend']}" if pick.get("pick_test_acc") is not None and pick.get("dense_test_acc") is not None
            else "test accuracy not measured (synthetic data)")
    delta = pick.get("test_delta")
    if delta:
        test += (f" ({100 * delta['delta']:+.2f} points, 95% interval {100 * delta['low']:+.2f} to "
                 f"{100 * delta['high']:+.2f}, paired on {delta['n']} images)")
    console.print(f"[bold]{verdict}: {pick['name']} on {pick['backend']}[/bold] ({pick['path']}): {pick['why']}; {test}.")
    if pick.get("resolution"):
        console.print(f"[yellow]Too few images to be sure: {pick['resolution']}.[/yellow]")
    for warning in result.get("warnings", []):
        console.print(f"[yellow]warning:[/yellow] {warning}")
    if result["untried"]:
        console.print(f"Stopped at the budget; not tried: {', '.join(result['untried'])} (`--resume` continues).")


tune = command(_tune, _OWN + cli_parameters(TuneOptions) + _TAIL)
