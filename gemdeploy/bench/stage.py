"""The bench stage as `gemdeploy bench` and gemdeploy.api's Run.bench both run it: the report folder is checked
first (a folder holding a report is never overwritten unless asked), then every run is measured and bench.json,
report.md and the plots are written."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from gemdeploy.errors import GemdeployError
from gemdeploy.run.rundir import check_output_dir
from gemdeploy.run import layout


def report_folder(run: str | Path, out: str | Path | None, overwrite: bool) -> Path:
    """Where the report goes (default RUN/bench), refused when it already holds one and ``overwrite`` is off."""
    folder = check_output_dir(Path(out) if out is not None else Path(run) / layout.BENCH_DIR, "bench folder")
    if folder.exists() and any(folder.iterdir()) and not overwrite:
        raise GemdeployError(f"{folder} already holds a report; pass --overwrite to replace it or --out to write "
                             "elsewhere")
    return folder


def bench_runs(paths: list[Path], opts, folder: Path, progress: Callable[[str], None] = lambda s: None,
               command: str | None = None) -> tuple[dict, list[str]]:
    """Measure ``paths`` (the first is the run benchmarked, the others what it is compared with) and write the
    report into ``folder`` (from report_folder); returns (the measurement, the file names written)."""
    # torch, ONNX Runtime and matplotlib load here, after every cheap refusal (report_folder, RunDir.open).
    from gemdeploy.bench.measure import measure
    from gemdeploy.bench.report import write_outputs
    from gemdeploy.machine import describe

    result = measure(list(paths), opts, progress)
    return result, write_outputs(result, folder, describe(), command=command)
