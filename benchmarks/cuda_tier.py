"""The CUDA test tier in one command: every test marked ``cuda`` (tests/test_cuda_tier.py and any other), run on a
GPU server, with a short record of what ran where.

    # here, with registry access: the wheels the GPU image lacks -> wheels/ (git-ignored, about 2 MiB)
    bash benchmarks/gpu_wheels.sh
    # on the GPU server (no registry), repository root, wheels/ carried along: installs wheels/ and this checkout
    # into a private folder, runs the tier within --timeout (default 240 s), writes OUT/cuda-tier.md + .json
    bash benchmarks/cuda_tier.sh OUT
    # back here: copy OUT/cuda-tier.md to docs/cuda-tier.md and commit it
    # the CPU dry run (CI runs it): collects the tier, runs what runs without a GPU (everything skips, saying why)
    .venv/bin/python -m benchmarks.cuda_tier --smoke --record /tmp/cuda-tier.md

The record names the device, torch and its CUDA build, gemdeploy's version, and each test's outcome and time; the
summary goes to stdout too (a GPU server returns only a handful of files). Exit status: 0 when nothing failed, 1
when a test failed or erred, 2 when the tier cannot run (no GPU without --smoke, nothing collected, timed out).
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import typer

from benchmarks.report import ROOT, markdown_table

RECORD = ROOT / "docs" / "cuda-tier.md"
MARKER = "cuda"


def environment() -> dict:
    """The device, torch and CUDA versions the tier ran with."""
    import torch

    import gemdeploy

    cuda = torch.cuda.is_available()
    return {
        "device": torch.cuda.get_device_name(0) if cuda else "no CUDA GPU",
        "gpus": torch.cuda.device_count() if cuda else 0,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if cuda else None,
        "gemdeploy": gemdeploy.__version__,
        "python": sys.version.split()[0],
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }


def parse_junit(path: Path) -> list[dict]:
    """One record per test case of pytest's JUnit XML: name, outcome, seconds, and the message of a skip or failure."""
    results = []
    for case in ET.parse(path).getroot().iter("testcase"):
        outcome, message = "passed", ""
        for tag in ("failure", "error", "skipped"):
            node = case.find(tag)
            if node is not None:
                outcome = {"failure": "failed", "error": "error", "skipped": "skipped"}[tag]
                text = (node.get("message") or node.text or "").strip()
                message = text.splitlines()[0][:200] if text else ""
                break
        module = case.get("classname", "").rsplit(".", 1)[-1]
        results.append({"test": f"{module}::{case.get('name')}", "outcome": outcome,
                        "seconds": round(float(case.get("time") or 0.0), 2), "message": message})
    return results


def run_tier(junit: Path, timeout: float) -> tuple[int | None, float, str]:
    """pytest over every ``cuda``-marked test; returns (exit code or None when cut off, seconds, output tail)."""
    cmd = [sys.executable, "-m", "pytest", "-m", MARKER, "-q", "-rA", "-p", "no:cacheprovider",
           f"--junitxml={junit}", str(ROOT / "tests")]
    start = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                              env={**os.environ, "PYTHONUNBUFFERED": "1"})
        code, output = proc.returncode, proc.stdout + proc.stderr
    except subprocess.TimeoutExpired as exc:
        code = None
        output = (exc.stdout or b"").decode(errors="replace") if isinstance(exc.stdout, bytes) else (exc.stdout or "")
    return code, time.perf_counter() - start, output[-4000:]


def render(env: dict, results: list[dict], seconds: float, smoke: bool) -> str:
    counts = {k: sum(r["outcome"] == k for r in results) for k in ("passed", "failed", "error", "skipped")}
    head = (f"# CUDA test tier{' (CPU dry run)' if smoke else ''}\n\n"
            f"Device: {env['device']} ({env['gpus']} GPU(s)); torch {env['torch']}, CUDA {env['cuda']}, cuDNN "
            f"{env['cudnn']}; gemdeploy {env['gemdeploy']}; Python {env['python']}; {env['date']}.\n\n"
            f"Command: `bash benchmarks/cuda_tier.sh OUT` (pytest -m {MARKER}), {seconds:.0f} s: "
            + ", ".join(f"{n} {k}" for k, n in counts.items()) + ".\n\n")
    rows = [[f"`{r['test']}`", r["outcome"], f"{r['seconds']:.1f}", r["message"].replace("|", "/")] for r in results]
    return head + markdown_table(["test", "outcome", "s", "note"], rows) + "\n"


def main(smoke: bool = typer.Option(False, "--smoke", help="CPU dry run: collect the tier and run what runs here."),
         record: Path = typer.Option(RECORD, help="Where the markdown record goes (a .json beside it)."),
         timeout: float = typer.Option(240.0, help="Seconds the tier may take in all."),
         ) -> None:
    import torch

    if not smoke and not torch.cuda.is_available():
        print("error: no CUDA GPU visible to PyTorch; run the tier on a GPU server, or --smoke for the CPU dry run",
              file=sys.stderr)
        raise typer.Exit(2)
    if smoke and record.resolve() == RECORD.resolve():
        print(f"error: --smoke would overwrite the GPU record {RECORD}; pass --record PATH", file=sys.stderr)
        raise typer.Exit(2)
    env = environment()
    print(f"CUDA tier on {env['device']}: torch {env['torch']}, CUDA {env['cuda']}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        junit = Path(tmp) / "junit.xml"
        code, seconds, tail = run_tier(junit, timeout)
        results = parse_junit(junit) if junit.is_file() else []
    text = render(env, results, seconds, smoke)
    record.parent.mkdir(parents=True, exist_ok=True)
    record.write_text(text)
    record.with_suffix(".json").write_text(json.dumps({"environment": env, "seconds": seconds, "exit_code": code,
                                                       "smoke": smoke, "results": results}, indent=2))
    print(text)
    if code is None:
        print(f"error: the tier ran past its {timeout:.0f} s; the record holds the tests that finished", file=sys.stderr)
        raise typer.Exit(2)
    if not results:
        print(f"error: no test marked {MARKER!r} was collected (pytest exit {code}):\n{tail}", file=sys.stderr)
        raise typer.Exit(2)
    if any(r["outcome"] in ("failed", "error") for r in results) or code not in (0, 5):
        print(tail, file=sys.stderr)
        raise typer.Exit(1)


if __name__ == "__main__":
    typer.run(main)
