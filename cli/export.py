"""`gemdeploy export RUN`: verified ONNX (fp32/fp16/INT8 Q/DQ), sparse storage, TensorRT engines."""

from __future__ import annotations

import inspect
import sys
from pathlib import Path

import typer

from gemdeploy.cli.errors import friendly_errors
from gemdeploy.exporters.config import ExportOptions
from gemdeploy.options import cli_parameters, command, from_cli

EXIT_INT8_DROP = 3


_OWN = [
    inspect.Parameter("run", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=Path,
                      default=typer.Argument(..., help="Run directory written by `gemdeploy mine`.")),
]
_TAIL = [
    inspect.Parameter("json_out", inspect.Parameter.KEYWORD_ONLY, annotation=bool, default=typer.Option(
        False, "--json", metavar="", help="Print the export record as JSON instead of a table.")),
    inspect.Parameter("quiet", inspect.Parameter.KEYWORD_ONLY, annotation=bool,
                      default=typer.Option(False, "--quiet", "-q", metavar="", help="No progress messages.")),
]


@friendly_errors
def _export(run: Path, **values) -> None:
    """Export a run's ticket to verified ONNX (fp32/fp16/INT8) and, with --trt, TensorRT engines."""
    opts = from_cli(ExportOptions, values).resolve()  # bad options fail before anything heavy is imported
    from gemdeploy.run.rundir import RunDir, check_output_dir

    check_output_dir(RunDir.open(run).path / "export", "export folder")  # so does a wrong RUN

    from rich.console import Console

    from gemdeploy.exporters.pipeline import export_run

    console = Console()
    quiet = values["quiet"] or values["json_out"]
    log = (lambda s: None) if quiet else (lambda s: console.print(f"[dim]{s}[/dim]"))
    record = export_run(run, opts, log=log)
    if values["json_out"]:
        import json

        print(json.dumps(record, indent=2, default=str))
    else:
        print_record(record, console)
    failed = int8_failures(record)
    for verdict in failed:
        print(f"WARNING: {verdict['message']}; the file is written and its sidecar says so. Fix: {verdict['advice']}.",
              file=sys.stderr)
    if failed:
        raise typer.Exit(EXIT_INT8_DROP)


def int8_failures(record: dict) -> list[dict]:
    """The verdicts of the INT8 files that lose more than --max-int8-drop (export exits 3 when there are any)."""
    return [v for p, v in (record.get("verdicts") or {}).items() if p.startswith("int8") and not v.get("ok", True)]


export = command(_export, _OWN + cli_parameters(ExportOptions) + _TAIL)


def _fmt_acc(v) -> str:
    return "n/a" if v is None else f"{v:.2%}"


def _fmt_bytes(v) -> str:
    return "-" if v is None else f"{v:,}"


def print_record(record: dict, console) -> None:
    from rich.table import Table

    table = Table(title=f"gemdeploy export -> {record['run']}/export ({record['source']} {record['model']})")
    table.add_column("artifact")
    table.add_column("test acc (ORT CPU)", justify="right")
    table.add_column("bytes", justify="right")
    table.add_column("check")
    sizes, verdicts = record["sizes"], record.get("verdicts") or {}
    for key, name in record["artifacts"].items():
        acc = record["accuracy"].get(key) if key != "sparse" else record["accuracy"].get("fp32")
        nbytes = sizes.get("sparse_storage_bytes") if key == "sparse" else None
        if nbytes is None:
            nbytes = (Path(record["run"]) / "export" / name).stat().st_size
        if key.startswith("int8"):
            verdict = verdicts.get(key) or {}
            qdq = (record.get("qdq_accuracy") or {}).get(key)
            check = f"Q/DQ numerics {_fmt_acc(qdq)}"
            if verdict.get("drop_points") is not None:
                check += f", drop {verdict['drop_points']:.1f} pt"
            if verdict.get("ok") is False:
                check = f"[bold red]{check} > {verdict['max_drop_points']:g} ({verdict['cause']})[/bold red]"
        elif key == "fp16":
            check = "top-1 agreement >= 99.5%"
        elif key == "sparse-cpu":
            check = "own runtime: test split <= 1e-4 x scale"
        else:
            check = "max |diff| <= 1e-4 x scale"
        table.add_row(name, _fmt_acc(acc), _fmt_bytes(nbytes), check)
    console.print(table)
    s24 = record.get("sparsity_24") or {}
    console.print(f"2:4 tensors (TensorRT layout): {s24.get('sparse', 0)} of {s24.get('eligible', 0)} eligible | ONNX bytes: dense "
                  f"{_fmt_bytes(sizes['dense_bytes'])}, compacted {_fmt_bytes(sizes['compacted_bytes'])}, "
                  f"sparse storage {_fmt_bytes(sizes.get('sparse_storage_bytes'))}")
    if "int8" in record["artifacts"] and "int8-cpu" not in record["artifacts"]:
        console.print("[dim]model.int8.onnx targets TensorRT (full-range weights); for ONNX Runtime on x86 CPUs "
                      "without VNNI add --precision int8-cpu[/dim]")
    if record.get("tensorrt") and record["tensorrt"].get("built"):
        console.print("TensorRT engines: " + ", ".join(record["tensorrt"]["engines"].values()))
