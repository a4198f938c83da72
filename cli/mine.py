"""`gemdeploy mine`: find a ticket, train it, compact it, into a run directory. Its options are MineConfig's
fields (gemdeploy.run.config), declared once there with their help and ranges, then each method's own options group
(declared next to the method), shown under the method's name."""

from __future__ import annotations

import inspect
from pathlib import Path

import typer

from gemdeploy.cli.errors import friendly_errors
from gemdeploy.errors import GemdeployError
from gemdeploy.options import at_least, changed, cli_parameters, command, from_cli, require
from gemdeploy.run.config import MineConfig, method_option_groups

_OWN = [
    inspect.Parameter("out", inspect.Parameter.KEYWORD_ONLY, annotation=Path,
                      default=typer.Option(..., "--out", "-o", help="Run directory to create (refused if it exists).")),
    inspect.Parameter("resume", inspect.Parameter.KEYWORD_ONLY, annotation=bool, default=typer.Option(
        False, "--resume", metavar="", help="Continue an interrupted run in --out from its last checkpoint.")),
    inspect.Parameter("overwrite", inspect.Parameter.KEYWORD_ONLY, annotation=bool, default=typer.Option(
        False, "--overwrite", metavar="", help="Replace a run directory gemdeploy wrote (never a foreign folder).")),
    inspect.Parameter("nproc_per_node", inspect.Parameter.KEYWORD_ONLY, annotation=int, default=typer.Option(
        1, "--nproc-per-node", help="Data-parallel processes on this machine, >= 1 (launches torchrun).")),
    inspect.Parameter("quiet", inspect.Parameter.KEYWORD_ONLY, annotation=bool,
                      default=typer.Option(False, "--quiet", "-q", metavar="", help="No progress bar.")),
    inspect.Parameter("json_out", inspect.Parameter.KEYWORD_ONLY, annotation=bool, default=typer.Option(
        False, "--json", metavar="", help="Print the summary as JSON instead of a table.")),
]


@friendly_errors
def _mine(**values) -> None:
    """Mine a lottery ticket at initialization, train it and write a run directory."""
    import os

    out, resume, overwrite = values["out"], values["resume"], values["overwrite"]
    require("--nproc-per-node", values["nproc_per_node"], at_least(1))
    # Bad values (and missing files) fail before torch, or the user's code, is imported.
    cfg = None if resume else config_from_cli(values).validate().check_files()
    if not resume and int(os.environ.get("RANK", "0")) == 0:
        from gemdeploy.run.rundir import RunDir

        RunDir.check_new(out, overwrite=overwrite)  # an existing or impossible --out fails before torch is imported
    if values["nproc_per_node"] > 1 and int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return launch_torchrun(values["nproc_per_node"])
    from gemdeploy.train import distributed as dist

    dist.setup_from_env(values["device"])
    try:
        run_command(out, cfg, resume=resume, overwrite=overwrite, quiet=values["quiet"], json_out=values["json_out"])
    finally:
        dist.teardown()


def method_panel(group, names: list[str]) -> str:
    """The help panel of a method's options: the methods that take them, by name."""
    return f"--method {' / '.join(names)}" + (f" ({group.note})" if group.note else "")


def method_parameters() -> list[inspect.Parameter]:
    return [p for group, names in method_option_groups().items()
            for p in cli_parameters(group, panel=method_panel(group, names))]


def config_from_cli(values: dict) -> MineConfig:
    """The run's configuration from the parsed command line: the shared options, and the method options given
    (MineConfig puts the --method's into its group and refuses another method's)."""
    given = {}
    for group in method_option_groups():
        given.update(changed(from_cli(group, values)))
    return from_cli(MineConfig, values, **given)


mine = command(_mine, cli_parameters(MineConfig) + method_parameters() + _OWN)


def run_command(out: Path, cfg: MineConfig | None, *, resume: bool, overwrite: bool, quiet: bool,
                json_out: bool) -> None:
    from gemdeploy import stages
    from gemdeploy.progress import Reporter
    from gemdeploy.train import distributed as dist

    run, summary = stages.mine(out, cfg, resume=resume, overwrite=overwrite,
                               reporter=Reporter(enabled=not quiet and dist.is_main()))
    if dist.is_main():
        print_summary(summary, run.path, json_out)
    # Leave together: a rank that tears down its process group while another still works (rank 0 compacts
    # and writes) can abort inside Gloo at exit.
    dist.barrier()


def launch_torchrun(nproc: int) -> None:
    """Re-run this very command under torchrun with ``nproc`` processes (single node, local rendezvous)."""
    import sys

    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import main as torchrun_main

    argv, skip = [], False
    for arg in sys.argv[1:]:
        if skip:
            skip = False
        elif arg == "--nproc-per-node":
            skip = True
        elif not arg.startswith("--nproc-per-node="):
            argv.append(arg)
    try:
        torchrun_main(["--standalone", "--nproc-per-node", str(nproc), "-m", "gemdeploy.cli", *argv])
    except ChildFailedError as exc:
        failed = ", ".join(str(r) for r in sorted(exc.failures))
        raise GemdeployError(f"the data-parallel run failed on rank(s) {failed} (their error is printed above)") from None
    except SignalException:  # Ctrl-C or SIGTERM reached torchrun, which has already stopped every rank
        raise KeyboardInterrupt from None


def print_summary(summary: dict, path: Path, json_out: bool) -> None:
    import json
    import sys

    from rich.console import Console
    from rich.table import Table

    if json_out:
        print(json.dumps(summary, indent=2))
        return
    table = Table(title=f"gemdeploy mine -> {path}")
    table.add_column("field")
    table.add_column("value", justify="right")
    acc = summary["test_acc"]
    training = summary.get("ticket_training") or {}
    rows = [
        ("method", summary["method"]), ("model / data", f"{summary['model']} / {summary['data']}"),
        ("pattern / init", f"{summary['pattern']} / {summary.get('init')}"),
        ("sparsity (target)", f"{summary['sparsity']:.4%} ({summary['target_sparsity']:.4%})"),
        ("kept weights", f"{summary['kept_weights']:,} of {summary['prunable_weights']:,}"),
        ("test accuracy", "n/a (synthetic data)" if acc is None else f"{acc:.2%}"),
        ("time to ticket", f"{summary['time_to_ticket_s']:.1f} s ({summary.get('ticket_epochs', 0):g} training epochs)"),
        ("ticket trained", f"from {training.get('starts_from')}: {training.get('recipe')}"),
        ("total time", f"{summary['total_time_s']:.1f} s"), ("device", summary["device"]),
    ]
    compaction = summary.get("compaction")
    if compaction:
        before, after, files = compaction["before"], compaction["after"], compaction["file_bytes"]
        rows += [("compacted params", f"{before['params']:,} -> {after['params']:,} ({after['nonzero_params']:,} nonzero)"),
                 ("compacted file", f"{files['dense']:,} -> {files['compact']:,} bytes")]
        if compaction.get("channels_left_whole"):
            rows.append(("channels left whole", compaction["channels_left_whole"]))
    kernels24 = summary.get("sparse24_kernels")
    if kernels24 and kernels24.get("can_run") is not None:
        rows.append(("2:4 GPU kernels", f"{kernels24['can_run']} layers can run sparse, {kernels24['wide']} wide enough "
                                        "to tend to pay"))
    for k, v in rows:
        table.add_row(k, str(v))
    Console().print(table)
    for warning in summary.get("warnings", []):
        print(f"WARNING: {warning}", file=sys.stderr)
