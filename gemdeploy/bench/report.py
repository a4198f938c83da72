"""Present `bench` results: a rich table for people, bench.json for programs, report.md with plots."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from gemdeploy.run.rundir import atomic_write_bytes, write_json


def _fmt_ratio(x: float | None, suffix: str = "x") -> str:
    return "-" if x is None else f"{x:.2f}{suffix}"


def _fmt_delta(x: float | None) -> str:
    return "-" if x is None else f"{x * 100:+.1f}pt"


def print_table(result: dict, console: Console | None = None) -> None:
    """One table per backend; full detail (p99, MACs, spread) is in bench.json and report.md."""
    if console is None:
        console = Console()
        if not console.is_terminal:
            console = Console(width=140)  # a pipe or file: keep rows on one line
    ref = result["reference"]
    for backend in dict.fromkeys(r["backend"] for r in result["rows"]):
        table = Table(title=f"{backend}: speedup and accuracy delta vs {escape(ref)}")
        for col in ("run", "artifact", "batch", "acc", "Δacc", "ms", "p90 ms", "img/s", "speedup", "nonzeros", "KiB"):
            table.add_column(col, justify="left" if col in ("run", "artifact") else "right", overflow="fold")
        for r in (r for r in result["rows"] if r["backend"] == backend):
            lat = r["latency_ms"]
            table.add_row(escape(r["run"]), escape(r["artifact"]), str(r["batch"]), f"{r['test_acc']:.2%}",
                          _fmt_delta(r["acc_delta_vs_reference"]), f"{lat['median']:.3f}", f"{lat['p90']:.3f}",
                          f"{r['throughput_ips']:,.0f}", _fmt_ratio(r["speedup_vs_reference"]),
                          f"{r['nonzero_params']:,}", "-" if r["file_bytes"] is None else f"{r['file_bytes'] / 1024:,.0f}")
        console.print(table)
    if result["unavailable"]:
        na = Table(title="not measured")
        for col in ("backend", "run", "reason"):
            na.add_column(col, overflow="fold")
        for u in result["unavailable"]:
            na.add_row(u["backend"], escape(u.get("run", "all")), escape(u["reason"]))
        console.print(na)


def _plots(result: dict, out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows, made = result["rows"], []
    big = max(r["batch"] for r in rows)
    # 1. accuracy vs latency, one marker per run, at the largest batch on each backend
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for backend in dict.fromkeys(r["backend"] for r in rows):
        pts = [r for r in rows if r["backend"] == backend and r["batch"] == big]
        ax.scatter([r["latency_ms"]["median"] for r in pts], [r["test_acc"] * 100 for r in pts], label=backend)
        for r in pts:
            ax.annotate(f"{r['method']} {r['precision']}", (r["latency_ms"]["median"], r["test_acc"] * 100), fontsize=7)
    ax.set_xscale("log")
    ax.set_xlabel(f"median latency at batch {big} (ms, log)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("Accuracy vs latency")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "accuracy_vs_latency.png", dpi=120)
    plt.close(fig)
    made.append("accuracy_vs_latency.png")
    # 2. latency bars per backend and batch
    keys = list(dict.fromkeys((r["backend"], r["batch"]) for r in rows))
    fig, axes = plt.subplots(1, len(keys), figsize=(max(6, 3.2 * len(keys)), 4), squeeze=False)
    for ax, (backend, batch) in zip(axes[0], keys):
        pts = [r for r in rows if r["backend"] == backend and r["batch"] == batch]
        ax.bar(range(len(pts)), [r["latency_ms"]["median"] for r in pts],
               yerr=[[0] * len(pts), [r["latency_ms"]["p90"] - r["latency_ms"]["median"] for r in pts]])
        ax.set_xticks(range(len(pts)), [f"{r['run']}\n{r['precision']}" for r in pts], fontsize=6, rotation=45)
        ax.set_title(f"{backend}, batch {batch}", fontsize=8)
        ax.set_ylabel("median ms (bar: to p90)", fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "latency_by_backend.png", dpi=120)
    plt.close(fig)
    made.append("latency_by_backend.png")
    # 3. accuracy vs density (log), one point per run (PyTorch accuracy)
    fig, ax = plt.subplots(figsize=(6, 4))
    for run in result["runs"]:
        d = max(1.0 - run["sparsity"], 1e-6) * 100
        ax.scatter([d], [run["mine_test_acc"] * 100])
        ax.annotate(f"{run['name']} ({run['method']})", (d, run["mine_test_acc"] * 100), fontsize=7)
    ax.set_xscale("log")
    ax.set_xlabel("density (% of weights kept, log)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("Accuracy vs density")
    fig.tight_layout()
    fig.savefig(out / "accuracy_vs_density.png", dpi=120)
    plt.close(fig)
    made.append("accuracy_vs_density.png")
    return made


def write_outputs(result: dict, out: Path, machine: str) -> list[str]:
    """bench.json, report.md and the PNG plots in ``out``; returns the file names written."""
    out.mkdir(parents=True, exist_ok=True)
    result = {**result, "machine": machine}
    write_json(out / "bench.json", result)
    plots = _plots(result, out) if result["rows"] else []
    lines = ["# gemdeploy bench report", "", f"Machine: {machine}", "",
             f"Reference for speedups and accuracy deltas: **{result['reference']}**. Latency: "
             f"{result['options']['warmup']} warm-up then {result['options']['iters']} timed calls on real test images; "
             f"CPU threads: {result['options']['threads']}.", "", "## Runs", "",
             "| run | method | model | data | pattern | sparsity | test acc (mine) |", "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['name']} | {r['method']} | {r['model']} | {r['data']} | {r['pattern']} | {r['sparsity']:.2%} | "
              f"{r['mine_test_acc']:.2%} |" for r in result["runs"]]
    lines += ["", "## Measurements", "",
              "| run | backend | artifact | batch | test acc | Δacc | median ms | p90 ms | p99 ms | img/s | speedup | nonzeros | MACs | file bytes |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        lat = r["latency_ms"]
        lines.append(f"| {r['run']} | {r['backend']} | {r['artifact']} | {r['batch']} | {r['test_acc']:.2%} | "
                     f"{_fmt_delta(r['acc_delta_vs_reference'])} | {lat['median']:.3f} | {lat['p90']:.3f} | "
                     f"{lat['p99']:.3f} | {r['throughput_ips']:,.0f} | {_fmt_ratio(r['speedup_vs_reference'])} | "
                     f"{r['nonzero_params']:,} | {r['macs']:,} | {r['file_bytes'] or '-'} |")
    if result["unavailable"]:
        lines += ["", "## Not measured", ""] + [f"- **{u['backend']}**{' (' + u['run'] + ')' if u.get('run') else ''}: "
                                                 f"{u['reason']}" for u in result["unavailable"]]
    if plots:
        lines += ["", "## Plots", ""] + [f"![{p}]({p})" for p in plots]
    atomic_write_bytes(out / "report.md", ("\n".join(lines) + "\n").encode())
    return ["bench.json", "report.md", *plots]
