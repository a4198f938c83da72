"""`gemdeploy compact`: compact a finished run, or project it to N:M into a new run and compact that."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from gemdeploy.cli.errors import friendly_errors
from gemdeploy.run.config import MineConfig
from gemdeploy.sparsity import PATTERNS

DEFAULTS = MineConfig()


@friendly_errors
def compact(
    run: Path = typer.Argument(..., help="A finished run directory (from `gemdeploy mine`)."),
    pattern: Optional[str] = typer.Option(None, help="2:4: project the run's weights to N:M by magnitude, fine-tune "
                                                     "briefly and write the result to --out. Default: compact RUN as it is."),
    nm: str = typer.Option(DEFAULTS.nm, help="N:M used by --pattern 2:4 (kept N of every M input channels)."),
    finetune_epochs: int = typer.Option(1, help="With --pattern 2:4: fine-tuning epochs after the projection."),
    round_to: int = typer.Option(DEFAULTS.round_to, help="Keep channel counts multiples of this."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="With --pattern 2:4: the new run directory to write."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing compaction (or --out directory)."),
    device: Optional[str] = typer.Option(None, help="auto, cpu or cuda (fine-tuning after a projection)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
    json_out: bool = typer.Option(False, "--json", help="Print the compaction record's totals as JSON."),
) -> None:
    """Remove dead channels and store the sparse weights compactly (compact.json + compact.safetensors)."""
    from gemdeploy.errors import GemdeployError
    from gemdeploy.options import at_least, require

    require("--finetune-epochs", finetune_epochs, at_least(0))
    require("--round-to", round_to, at_least(1))
    from gemdeploy.run.artifacts import RunArtifacts
    from gemdeploy.compact.compaction import RECORD, compact_stage

    if pattern is None:
        if out is not None:
            raise GemdeployError("--out is only used with --pattern 2:4 (plain compaction writes into RUN)")
        record, target = compact_stage(RunArtifacts.open(run), round_to, overwrite), run
    elif pattern in PATTERNS and PATTERNS.get(pattern).groups(nm) is not None:  # an N:M pattern: a projection
        if out is None:
            raise GemdeployError("--pattern 2:4 writes a new run: pass --out DIR (RUN itself is never modified)")
        if Path(out).resolve() == Path(run).resolve():
            raise GemdeployError("--out must differ from RUN: the source run is never modified")
        from gemdeploy import stages

        summary = stages.project(run, out, nm=nm, finetune_epochs=finetune_epochs, round_to=round_to,
                                 overwrite=overwrite, device=device, quiet=quiet)
        new = RunArtifacts.open(out)
        record, target = new.run.read_json(RECORD), out
        source = RunArtifacts.open(run)
        projected = {"nm": nm, "test_acc": (summary or {}).get("test_acc", new.summary().get("test_acc")),
                     "source_test_acc": source.summary().get("test_acc") if source.is_finished() else None,
                     "finetune_epochs": finetune_epochs}
        print_record(record, target, json_out, projected)
        return
    else:
        projectable = [p for p in PATTERNS.names() if PATTERNS.get(p).groups(nm) is not None]
        raise GemdeployError(f"unknown --pattern {pattern!r} for compact; choose {', '.join(projectable)} (or leave "
                             "it out)")
    print_record(record, target, json_out)


def nm_layers(record: dict) -> tuple[int, int]:
    """(layers whose weights hold N:M, layers eligible for it) from compact.json's per-layer record."""
    eligible = [r for r in record["layers"] if r.get("nm_eligible")]
    return sum(1 for r in eligible if r.get("nm_holds")), len(eligible)


def print_record(record: dict, path: Path, json_out: bool, projected: dict | None = None) -> None:
    import json

    if json_out:
        out = {k: record[k] for k in ("before", "after", "file_bytes", "round_to", "check")}
        out["channels_left_whole"] = record.get("channels_left_whole")
        if projected is not None:
            holds, eligible = nm_layers(record)
            out["projected"] = {**projected, "nm_layers_hold": holds, "nm_layers_eligible": eligible}
        print(json.dumps(out, indent=2))
        return
    before, after, files = record["before"], record["after"], record["file_bytes"]
    table = Table(title=f"gemdeploy compact -> {path}")
    for col in ("", "before", "after", "ratio"):
        table.add_column(col, justify="right")
    rows = [("parameters", before["params"], after["params"]), ("nonzero parameters", before["nonzero_params"], after["nonzero_params"]),
            ("MACs", before["macs"], after["macs"]), ("nonzero MACs", before["nonzero_macs"], after["nonzero_macs"]),
            ("file bytes", files["dense"], files["compact"])]
    for name, b, a in rows:
        table.add_row(name, f"{b:,}", f"{a:,}", f"{a / b:.3f}" if b else "-")
    Console().print(table)
    changed = [r for r in record["layers"] if (r["in_before"], r["out_before"]) != (r["in_after"], r["out_after"])]
    print(f"{len(changed)} of {len(record['layers'])} layers thinner; max |logit diff| "
          f"{record['check']['max_abs_logit_diff']:.2e} (logit scale {record['check']['logit_scale']:.2e})")
    if record.get("channels_left_whole"):
        print(f"channels left whole: {record['channels_left_whole']}")
    if projected is not None:
        holds, eligible = nm_layers(record)
        acc, src = projected.get("test_acc"), projected.get("source_test_acc")
        acc_text = "n/a (synthetic data)" if acc is None else f"{acc:.2%}"
        if acc is not None and src is not None:
            acc_text += f" (source run {src:.2%}, {(acc - src) * 100:+.1f} points after {projected['finetune_epochs']} " \
                        f"fine-tuning epoch{'s' if projected['finetune_epochs'] != 1 else ''})"
        print(f"{projected['nm']} holds in {holds} of {eligible} eligible layers (ungrouped, input channels a "
              f"multiple of M, not the first conv); new run's test accuracy: {acc_text}")
