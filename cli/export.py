"""`gemdeploy export RUN`: verified ONNX (fp32/fp16/INT8 Q/DQ), sparse storage, TensorRT engines."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console
from rich.table import Table

from gemdeploy.cli.errors import friendly_errors

EXIT_INT8_DROP = 3


@friendly_errors
def export(
    run: Path = typer.Argument(..., help="Run directory written by `gemdeploy mine`."),
    precision: List[str] = typer.Option(["fp32"], "--precision", "-p",
                                        help="fp32, fp16 or int8 (repeatable); fp32 is always exported as the reference."),
    trt: bool = typer.Option(False, "--trt", help="Also build TensorRT engines (needs TensorRT and a CUDA GPU)."),
    calib_samples: int = typer.Option(512, help="INT8: training-split images used for calibration."),
    calib_method: str = typer.Option("entropy", help="INT8 calibration: entropy, percentile or minmax."),
    max_int8_drop: float = typer.Option(1.0, help="INT8: largest acceptable test-accuracy drop, in points; "
                                                  f"above it the export warns and exits {EXIT_INT8_DROP}."),
    verify_samples: int = typer.Option(512, help="Test images on which ONNX Runtime is checked against PyTorch."),
    exporter: str = typer.Option("auto", help="auto (torch.export, falling back to TorchScript), dynamo or torchscript."),
    sparse_storage: bool = typer.Option(True, "--sparse-storage/--no-sparse-storage",
                                        help="Also write model.sparse.onnx (weights as ONNX sparse initializers)."),
    min_batch: int = typer.Option(1, help="TensorRT optimization profile: smallest batch."),
    opt_batch: int = typer.Option(32, help="TensorRT optimization profile: batch to tune for."),
    max_batch: int = typer.Option(256, help="TensorRT optimization profile: largest batch."),
    workspace_mib: int = typer.Option(2048, help="TensorRT builder workspace limit (MiB)."),
    timing_cache: Optional[Path] = typer.Option(None, help="TensorRT timing cache, reused across builds "
                                                          "(default ~/.cache/gemdeploy/tensorrt-timing.cache)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace existing artifacts in RUN/export/."),
    json_out: bool = typer.Option(False, "--json", help="Print the export record as JSON instead of a table."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress messages."),
) -> None:
    """Export a run's ticket to verified ONNX (fp32/fp16/INT8) and, with --trt, TensorRT engines."""
    from gemdeploy.exporters.pipeline import ExportOptions, export_run

    opts = ExportOptions(precisions=[p.lower() for p in precision], trt=trt, calib_samples=calib_samples,
                         calib_method=calib_method, max_int8_drop=max_int8_drop, verify_samples=verify_samples,
                         exporter=exporter, overwrite=overwrite, sparse_storage=sparse_storage, min_batch=min_batch,
                         opt_batch=opt_batch, max_batch=max_batch, workspace_mib=workspace_mib,
                         timing_cache=str(timing_cache) if timing_cache else None)
    console = Console()
    log = (lambda s: None) if quiet or json_out else (lambda s: console.print(f"[dim]{s}[/dim]"))
    record = export_run(run, opts, log=log)
    if json_out:
        import json

        print(json.dumps(record, indent=2, default=str))
    else:
        print_record(record, console)
    if record.get("int8_drop_ok") is False:
        print(f"WARNING: INT8 test accuracy dropped {record['int8_drop_points']:.2f} points "
              f"(fp32 {record['accuracy']['fp32']:.2%} -> int8 {record['accuracy']['int8']:.2%}), "
              f"more than --max-int8-drop {record['max_int8_drop']:g}; model.int8.onnx is written but flagged "
              f"in its sidecar (try --calib-method percentile or more --calib-samples)", file=sys.stderr)
        raise typer.Exit(EXIT_INT8_DROP)


def _fmt_acc(v) -> str:
    return "n/a" if v is None else f"{v:.2%}"


def _fmt_bytes(v) -> str:
    return "-" if v is None else f"{v:,}"


def print_record(record: dict, console: Console) -> None:
    table = Table(title=f"gemdeploy export -> {record['run']}/export ({record['source']} {record['model']})")
    table.add_column("artifact")
    table.add_column("test acc (ORT CPU)", justify="right")
    table.add_column("bytes", justify="right")
    table.add_column("check")
    sizes = record["sizes"]
    for key, name in record["artifacts"].items():
        acc = record["accuracy"].get(key) if key != "sparse" else record["accuracy"].get("fp32")
        nbytes = sizes.get("sparse_storage_bytes") if key == "sparse" else None
        if nbytes is None:
            nbytes = (Path(record["run"]) / "export" / name).stat().st_size
        if key == "int8":
            check = f"Q/DQ, drop {record['int8_drop_points']} pt" if record.get("int8_drop_points") is not None else "Q/DQ"
            if record.get("int8_drop_ok") is False:
                check = f"[bold red]{check} > {record['max_int8_drop']:g}[/bold red]"
        elif key == "fp16":
            check = "top-1 agreement >= 99.5%"
        else:
            check = "max |diff| <= 1e-4 x scale"
        table.add_row(name, _fmt_acc(acc), _fmt_bytes(nbytes), check)
    console.print(table)
    s24 = record["sparsity_24"]
    console.print(f"2:4 tensors (TensorRT layout): {s24['sparse']} of {s24['eligible']} eligible | ONNX bytes: dense "
                  f"{_fmt_bytes(sizes['dense_bytes'])}, compacted {_fmt_bytes(sizes['compacted_bytes'])}, "
                  f"sparse storage {_fmt_bytes(sizes.get('sparse_storage_bytes'))}")
    if record.get("tensorrt") and record["tensorrt"].get("built"):
        console.print("TensorRT engines: " + ", ".join(record["tensorrt"]["engines"].values()))
