"""Shared by every benchmark script: describe the machine, and rewrite one section of BENCHMARKS.md.

Each script owns one section, delimited by HTML comments, so scripts never clobber each other's figures.
"""

from __future__ import annotations

import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS_MD = ROOT / "BENCHMARKS.md"
HEADER = "# Benchmarks\n\nEvery figure here was produced by a script in `benchmarks/`; each section names its command and machine.\n"


def machine() -> str:
    from gemdeploy.machine import describe

    return describe()


def write_section(name: str, body: str) -> None:
    """Replace (or append) the section ``name`` of BENCHMARKS.md, atomically."""
    from gemdeploy.files import atomic_write_bytes

    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    text = BENCHMARKS_MD.read_text() if BENCHMARKS_MD.exists() else HEADER
    block = f"{start}\n{body.rstrip()}\n{end}"
    if start in text and end in text:
        text = text[: text.index(start)] + block + text[text.index(end) + len(end):]
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    atomic_write_bytes(BENCHMARKS_MD, text.encode())


def finished_summary(run: Path) -> dict | None:
    """A run directory's summary.json, or None while the run has not finished (benchmarks reuse finished runs)."""
    f = run / "summary.json"
    return json.loads(f.read_text()) if f.is_file() else None


def markdown_table(headers: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)
