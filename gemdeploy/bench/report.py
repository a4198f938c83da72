"""Present `bench` results: a rich table for people, bench.json for programs, report.md with plots and a verdict.

Every speed-up and accuracy delta is against the reference run's (the dense run's) fp32 on the same backend
and batch, with a second figure against the reference's same precision; the baseline is named wherever a
number depends on it. Latency is the median with its p10-p90 range; noisy rows are marked.
"""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from gemdeploy.run.rundir import atomic_write_bytes, write_json

NOISY_MARK = "!"


def _fmt_ratio(x: float | None, suffix: str = "x") -> str:
    return "-" if x is None else f"{x:.2f}{suffix}"


def _fmt_delta(x: float | None, ci: dict | None = None) -> str:
    """'-9.7pt', with its 95% interval when known: '-9.7pt [-12.1, -7.3]'."""
    if x is None:
        return "-"
    return f"{x * 100:+.1f}pt" + (f" [{ci['low'] * 100:+.1f}, {ci['high'] * 100:+.1f}]" if ci else "")


def _fmt_acc(acc: float, ci: list | None = None) -> str:
    return f"{acc:.2%}" + (f" ({ci[0]:.1%}-{ci[1]:.1%})" if ci else "")


def _fmt_ms(v: float) -> str:
    return f"{v:.3g}" if v < 1 else f"{v:.3f}" if v < 10 else f"{v:.2f}" if v < 100 else f"{v:.1f}"


def _fmt_count(n: int | None) -> str:
    if n is None:
        return "-"
    for unit, div in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= div:
            return f"{n / div:.3g}{unit}"
    return str(n)


def _vs(speedup: float | None, delta: float | None, noisy: bool = False, ci: dict | None = None) -> str:
    """'2.91x -9.7pt [-12.1, -7.3]'; '!' when either latency behind the ratio is noisy."""
    return "-" if speedup is None else f"{speedup:.2f}x{NOISY_MARK if noisy else ''} {_fmt_delta(delta, ci)}"


def _baseline_of(rows: list[dict]) -> str:
    names = sorted({r["baseline"] for r in rows if r.get("baseline")})
    return "; ".join(names) if names else "none (no reference fp32 here)"


def print_table(result: dict, console: Console | None = None) -> None:
    """One table per backend; full detail (p99, MACs, every percentile) is in bench.json and report.md."""
    if console is None:
        console = Console()
        if not console.is_terminal:
            console = Console(width=140)  # a pipe or file: keep rows on one line
    opts, ref = result["options"], result["reference"]
    for backend in dict.fromkeys(r["backend"] for r in result["rows"]):
        rows = [r for r in result["rows"] if r["backend"] == backend]
        threads = f", {opts['threads']} CPU thread{'s' if opts['threads'] != 1 else ''}" if rows[0]["device"] == "cpu" else ""
        table = Table(title=f"{backend}{threads}: speed-up and Δacc vs {escape(_baseline_of(rows))}",
                      caption=f"second figure: vs {escape(ref)} in the same precision; acc: test accuracy (95% "
                              "interval); Δacc [95% paired interval]; ms: median and p10-p90 of "
                              f"the calls; {NOISY_MARK} noisy (p10-p90 > {opts['noisy_spread']:.0%} of the median "
                              "after a longer re-measurement)" if rows else None)
        for col in ("run", "artifact", "batch", "acc", "ms", "p10-p90", "p99", "img/s", f"vs {ref} fp32", "same prec.",
                    "nonzeros", "KiB"):
            table.add_column(escape(col), justify="left" if col in ("run", "artifact") else "right", overflow="fold")
        for r in rows:
            lat = r["latency_ms"]
            noisy = lat.get("noisy")
            ms = f"{_fmt_ms(lat['median'])}{' ' + NOISY_MARK if noisy else ''}"
            table.add_row(escape(r["run"]), escape(r["artifact"]), str(r["batch"]),
                          _fmt_acc(r["test_acc"], r.get("test_acc_ci")),
                          f"[yellow]{ms}[/yellow]" if noisy else ms,
                          f"{_fmt_ms(lat['p10'])}-{_fmt_ms(lat['p90'])}", _fmt_ms(lat["p99"]),
                          f"{r['throughput_ips']:,.0f}",
                          _vs(r["speedup_vs_dense_fp32"], r["acc_delta_vs_dense_fp32"], noisy or r.get("baseline_noisy"),
                              r.get("acc_delta_vs_dense_fp32_ci")),
                          _vs(r["speedup_vs_dense_same_precision"], r["acc_delta_vs_dense_same_precision"],
                              noisy or r.get("baseline_same_precision_noisy"), r.get("acc_delta_vs_dense_same_precision_ci")),
                          f"{r['nonzero_params']:,}", "-" if r["file_bytes"] is None else f"{r['file_bytes'] / 1024:,.0f}")
        console.print(table)
        for line in sparse24_lines(rows):
            console.print(escape(line))
    if result.get("gpu"):
        from gemdeploy.machine import describe_gpu

        console.print(f"GPU: {escape(describe_gpu(result['gpu']))}")
    if result["unavailable"]:
        na = Table(title="not measured")
        for col in ("backend", "run", "reason"):
            na.add_column(col, overflow="fold")
        for u in result["unavailable"]:
            na.add_row(u["backend"], escape(u.get("run", "all")), escape(u["reason"]))
        console.print(na)
    text = verdict(result)
    if text:
        console.print(text.replace("**", ""))


def sparse24_lines(rows: list[dict]) -> list[str]:
    """One line per row of the 2:4 backend: how many layers went sparse at that batch, and why the others did not."""
    return [f"{r['run']} {r['artifact']}, {r['sparse24']['summary']}" for r in rows if r.get("sparse24")]


def sparse24_markdown(rows: list[dict]) -> list[str]:
    """Per run, the per-layer 2:4 verdict at every batch the 2:4 backend timed (one column per batch)."""
    lines = []
    for run in dict.fromkeys(r["run"] for r in rows if r.get("sparse24")):
        mine = [r for r in rows if r["run"] == run and r.get("sparse24")]
        layers = [v["layer"] for v in mine[0]["sparse24"]["layers"]]
        shape = {v["layer"]: v["shape"] for v in mine[0]["sparse24"]["layers"]}
        by = {(r["batch"], v["layer"]): v for r in mine for v in r["sparse24"]["layers"]}
        lines += ["", f"#### {run}: 2:4 verdict per layer ({mine[0]['sparse24']['kernels']})", "",
                  *[f"- {r['sparse24']['summary']}; max |logit diff| {r['sparse24']['max_abs_logit_diff']:.3g} "
                    f"(scale {r['sparse24']['logit_scale']:.3g})" for r in mine], "",
                  "| layer | shape | " + " | ".join(f"batch {r['batch']}" for r in mine) + " |",
                  "|---|---|" + "---|" * len(mine)]
        for name in layers:
            cells = []
            for r in mine:
                v = by[(r["batch"], name)]
                cells.append(("**sparse** " if v["sparse"] else "dense: ") + v["why"].replace("|", "/"))
            lines.append(f"| {name} | {shape[name]} | " + " | ".join(cells) + " |")
    return lines


# --------------------------------------------------------------------------------------------- verdict
def _pick_baseline(rows: list[dict], ref: str, batch: int) -> dict | None:
    fp32 = [r for r in rows if r["run"] == ref and r["precision"] == "fp32" and r["batch"] == batch]
    order = ("onnxruntime-cpu", "pytorch-cpu", "tensorrt", "onnxruntime-cuda", "pytorch-cuda")
    return min(fp32, key=lambda r: (order.index(r["backend"]) if r["backend"] in order else len(order), r["backend"]),
               default=None)


def verdict(result: dict) -> str:
    """One paragraph: was the ticket worth it? Its accuracy cost against its latency and size gain, all against
    the reference run's fp32, at the largest batch measured."""
    rows, ref = result["rows"], result["reference"]
    runs = [r for r in result["runs"] if r["name"] != ref]
    if not rows:
        return ""
    if not runs:
        return (f"**Verdict: not judged.** {ref} was measured alone; pass `--against` a `--method dense` run (and "
                "IMP runs) to see what the ticket costs and gains.")
    subject = runs[0]
    batch = max(r["batch"] for r in rows)
    base = _pick_baseline(rows, ref, batch)
    mine = [r for r in rows if r["run"] == subject["name"] and r["batch"] == batch]
    timed = [r for r in mine if r["speedup_vs_dense_fp32"] is not None]
    if base is None or not timed:
        return (f"**Verdict: not judged.** No fp32 measurement of {ref} at batch {batch} to compare "
                f"{subject['name']} with.")
    ref_kind = "dense fp32" if result.get("reference_is_dense") else f"{ref} fp32 (no dense run was given)"
    same = next((r for r in mine if r["backend"] == base["backend"] and r["precision"] == "fp32"), None)
    acc_pt = None if same is None else (base["test_acc"] - same["test_acc"]) * 100
    fastest = min(timed, key=lambda r: r["latency_ms"]["median"])
    fast_pt = (base["test_acc"] - fastest["test_acc"]) * 100
    cost = max(fast_pt, acc_pt if acc_pt is not None else fast_pt)
    speedup = base["latency_ms"]["median"] / fastest["latency_ms"]["median"]
    files = [r for r in mine if r["file_bytes"]]
    smallest = min(files, key=lambda r: r["file_bytes"], default=None)
    size_gain = base["file_bytes"] / smallest["file_bytes"] if smallest and base["file_bytes"] else None
    ref_macs = next((r["nonzero_macs"] for r in rows if r["run"] == ref), None)
    # What the test split can tell: each accuracy delta's paired interval, read against a 1-point loss.
    intervals = [r.get("acc_delta_vs_dense_fp32_ci") for r in (same, fastest) if r is not None]
    undecided = [ci for ci in intervals if ci and ci["judgement"] == "too small to tell"]
    if undecided and not any(ci and ci["judgement"] == "worse" for ci in intervals):
        call = "the test split is too small to tell"
    elif cost <= 1.0 and (speedup >= 1.2 or (size_gain or 0) >= 2):
        call = "worth it"
    elif speedup < 1.05 and (size_gain or 0) < 2:
        call = "not worth it here"
    elif cost <= 1.0:
        call = "not worth it here (no real gain)"
    else:
        call = (f"a trade-off: worth it only if {cost:.1f} points of accuracy are acceptable for "
                f"{speedup:.1f}x lower latency" + (f" and a {size_gain:.0f}x smaller file" if size_gain and size_gain >= 1.5 else ""))
    lat, blat = fastest["latency_ms"], base["latency_ms"]
    parts = [f"**Verdict: {call}.** The ticket `{subject['name']}` ({subject['method']}, "
             f"{subject['sparsity']:.1%} sparse)"]
    if same is not None:
        parts.append(f" scores {same['test_acc']:.2%} against {base['test_acc']:.2%} for {ref_kind} "
                     f"({-acc_pt:+.1f} points{_ci_words(same.get('acc_delta_vs_dense_fp32_ci'))}, "
                     f"both {base['backend']} fp32).")
    else:
        parts.append(f" has no fp32 measurement on {base['backend']}.")
    parts.append(f" At batch {batch} its fastest artifact, {fastest['artifact']} on {fastest['backend']}, takes "
                 f"{_fmt_ms(lat['median'])} ms (p10-p90 {_fmt_ms(lat['p10'])}-{_fmt_ms(lat['p90'])}) against "
                 f"{_fmt_ms(blat['median'])} ms for {ref_kind} on {base['backend']}: {speedup:.2f}x "
                 f"{'faster' if speedup >= 1 else 'slower'}, at {fastest['test_acc']:.2%} test accuracy "
                 f"({-fast_pt:+.1f} points{_ci_words(fastest.get('acc_delta_vs_dense_fp32_ci'))}).")
    if undecided:
        worst = max(undecided, key=lambda ci: ci.get("images_for_1_point") or 0)
        need = worst.get("images_for_1_point")
        parts.append(f" On {worst['n']:,} test images an accuracy difference that small is within its error bar: "
                     f"the interval holds both no loss and a loss of more than 1 point; " +
                     (f"about {need:,} test images would decide it." if need else
                      "it sits on the 1-point line, where no test split decides it."))
    if smallest is not None and size_gain:
        parts.append(f" Its smallest file ({smallest['artifact']}) is {smallest['file_bytes'] / 1024:,.0f} KiB against "
                     f"{base['file_bytes'] / 1024:,.0f} KiB ({size_gain:.1f}x smaller);")
    parts.append(f" it executes {_fmt_count(fastest['nonzero_macs'])} nonzero MACs per image"
                 + (f" against {_fmt_count(ref_macs)} for {ref}." if ref_macs else "."))
    noisy = [r for r in (fastest, base) if r["latency_ms"].get("noisy")]
    if noisy:
        parts.append(" Caution: " + " and ".join(f"{r['run']} {r['artifact']} on {r['backend']}" for r in noisy)
                     + " stayed noisy after re-measuring; re-run on a quieter machine before trusting the speed-up.")
    return "".join(parts)


def _ci_words(ci: dict | None) -> str:
    return "" if not ci else f", 95% CI {ci['low'] * 100:+.1f} to {ci['high'] * 100:+.1f}"


# --------------------------------------------------------------------------------------------- plots
def _ms_formatter():
    from matplotlib.ticker import FuncFormatter

    def fmt(v, _pos):
        if v <= 0:
            return ""
        return f"{v:g}" if v >= 0.01 else f"{v:.0e}"

    return FuncFormatter(fmt)


def _log_axis(ax, axis: str = "x") -> None:
    from matplotlib.ticker import LogLocator, NullFormatter

    target = ax.xaxis if axis == "x" else ax.yaxis
    (ax.set_xscale if axis == "x" else ax.set_yscale)("log")
    target.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    target.set_major_formatter(_ms_formatter())
    target.set_minor_formatter(NullFormatter())


def _spread_labels(ax, points: list[tuple[float, float, str]], fontsize: float = 9) -> None:
    """Label points without overlap: each text to the right of its point, pushed apart vertically in display
    space and kept inside the axes, with a thin leader line."""
    if not points:
        return
    fig = ax.figure
    fig.canvas.draw()
    trans = ax.transData
    height = fontsize * fig.dpi / 72 * 1.35
    bbox = ax.get_window_extent()
    placed = []
    for x, y, text in sorted(points, key=lambda p: trans.transform((p[0], p[1]))[1]):
        px, py = trans.transform((x, y))
        ty = max(py, placed[-1] + height) if placed else py
        placed.append(ty)
    overflow = placed[-1] - (bbox.y1 - height / 2) if placed else 0
    if overflow > 0:
        placed = [max(bbox.y0 + height / 2, t - overflow) for t in placed]
        for i in range(1, len(placed)):
            placed[i] = max(placed[i], placed[i - 1] + height)
    inv = ax.transData.inverted()
    for (x, y, text), ty in zip(sorted(points, key=lambda p: trans.transform((p[0], p[1]))[1]), placed):
        px, _ = trans.transform((x, y))
        right = px < bbox.x0 + 0.62 * bbox.width
        tx = px + (12 if right else -12)
        ax.annotate(text, xy=(x, y), xytext=tuple(inv.transform((tx, ty))), textcoords="data",
                    ha="left" if right else "right", va="center", fontsize=fontsize, zorder=5,
                    bbox={"boxstyle": "round,pad=0.2", "fc": "white", "ec": "0.8", "lw": 0.5, "alpha": 0.9},
                    arrowprops={"arrowstyle": "-", "lw": 0.6, "color": "0.45"})


def _pareto(points: list[dict]) -> list[dict]:
    """Rows no other row beats on both latency (lower) and accuracy (higher)."""
    front = []
    for r in sorted(points, key=lambda r: (r["latency_ms"]["median"], -r["test_acc"])):
        if not front or r["test_acc"] > front[-1]["test_acc"]:
            front.append(r)
    return front


def _style(result: dict):
    import matplotlib.pyplot as plt

    names = [r["name"] for r in result["runs"]]
    colors = plt.get_cmap("tab10")
    color = {n: colors(i % 10) for i, n in enumerate(names)}
    precisions = list(dict.fromkeys(r["precision"] for r in result["rows"]))
    shapes = "osD^vP*X"
    marker = {p: shapes[i % len(shapes)] for i, p in enumerate(precisions)}
    return color, marker


def _plot_accuracy_vs_latency(result: dict, out: Path) -> str:
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    rows = result["rows"]
    big = max(r["batch"] for r in rows)
    backends = list(dict.fromkeys(r["backend"] for r in rows))
    color, marker = _style(result)
    ncols = min(2, len(backends))
    nrows = -(-len(backends) // ncols)
    fig, grid = plt.subplots(nrows, ncols, figsize=(6.6 * ncols, 4.6 * nrows + 0.9), squeeze=False, sharey=True)
    axes = [[ax for row in grid for ax in row]]
    for ax in axes[0][len(backends):]:
        ax.set_visible(False)
    accs = [r["test_acc"] * 100 for r in rows if r["batch"] == big]
    lo, hi = min(accs), max(accs)
    pad = max(1.0, (hi - lo) * 0.12)
    for ax, backend in zip(axes[0], backends):
        pts = [r for r in rows if r["backend"] == backend and r["batch"] == big]
        for r in pts:
            lat = r["latency_ms"]
            ax.errorbar([lat["median"]], [r["test_acc"] * 100],
                        xerr=[[lat["median"] - lat["p10"]], [lat["p90"] - lat["median"]]], fmt=marker[r["precision"]],
                        color=color[r["run"]], ms=8, elinewidth=1, capsize=3, mfc="none" if lat.get("noisy") else None)
        front = _pareto(pts)
        if len(front) > 1:
            ax.step([r["latency_ms"]["median"] for r in front], [r["test_acc"] * 100 for r in front], where="post",
                    color="0.6", lw=1, ls="--", zorder=0)
        _log_axis(ax, "x")
        lats = [v for r in pts for v in (r["latency_ms"]["p10"], r["latency_ms"]["p90"])]
        ax.set_xlim(min(lats) / 1.6, max(lats) * 2.2)
        ax.set_ylim(lo - pad, hi + pad)
        ax.set_title(f"{backend}, batch {big}", fontsize=11)
        ax.set_xlabel("median latency (ms, log scale; lines: p10-p90)", fontsize=10)
        ax.grid(True, which="major", alpha=0.3)
        ax.tick_params(labelsize=9)
        _spread_labels(ax, [(r["latency_ms"]["median"], r["test_acc"] * 100, f"{r['run']} {r['precision']}")
                            for r in front])
    for row in grid:
        row[0].set_ylabel("test accuracy (%)", fontsize=10)
    handles = [Line2D([], [], color=color[n], marker="o", ls="", ms=7, label=n) for n in color]
    handles += [Line2D([], [], color="0.3", marker=marker[p], ls="", ms=7, mfc="none", label=p) for p in marker]
    handles.append(Line2D([], [], color="0.6", ls="--", label="Pareto front (labelled)"))
    fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 6), fontsize=9, frameon=False)
    fig.suptitle("Accuracy vs latency (hollow marker: noisy measurement)", fontsize=12)
    legend_rows = -(-len(handles) // 6)
    fig.tight_layout(rect=(0, (0.35 + 0.25 * legend_rows) / fig.get_size_inches()[1], 1, 1))
    name = "accuracy_vs_latency.png"
    fig.savefig(out / name, dpi=120)
    plt.close(fig)
    return name


def _plot_latency(result: dict, out: Path) -> str:
    import matplotlib.pyplot as plt

    rows = result["rows"]
    backends = list(dict.fromkeys(r["backend"] for r in rows))
    batches = sorted({r["batch"] for r in rows})
    color, _ = _style(result)
    fig, axes = plt.subplots(len(backends), len(batches), squeeze=False,
                             figsize=(6.2 * len(batches), sum(1.3 + 0.36 * max(2, len([r for r in rows if r["backend"] == b
                                                                                       and r["batch"] == batches[0]]))
                                                              for b in backends)))
    for i, backend in enumerate(backends):
        for j, batch in enumerate(batches):
            ax = axes[i][j]
            pts = sorted([r for r in rows if r["backend"] == backend and r["batch"] == batch],
                         key=lambda r: r["latency_ms"]["median"], reverse=True)
            if not pts:
                ax.set_visible(False)
                continue
            y = list(range(len(pts)))
            for yy, r in zip(y, pts):  # a dot at the median, a line across p10-p90: no bar from an arbitrary origin
                lat = r["latency_ms"]
                ax.errorbar([lat["median"]], [yy], xerr=[[lat["median"] - lat["p10"]], [lat["p90"] - lat["median"]]],
                            fmt="o", color=color[r["run"]], ms=7, elinewidth=2, capsize=4,
                            mfc="white" if lat.get("noisy") else color[r["run"]])
            ax.set_yticks(list(y), [f"{r['run']} · {r['precision']}" + (" (noisy)" if r["latency_ms"].get("noisy") else "")
                                    for r in pts], fontsize=9)
            _log_axis(ax, "x")
            lows = [r["latency_ms"]["p10"] for r in pts]
            highs = [r["latency_ms"]["p90"] for r in pts]
            ax.set_xlim(min(lows) / 1.8, max(highs) * 1.8)
            for yy, r in zip(y, pts):
                ax.text(r["latency_ms"]["p90"] * 1.08, yy, _fmt_ms(r["latency_ms"]["median"]), va="center", fontsize=8)
            ax.set_title(f"{backend}, batch {batch}", fontsize=11)
            ax.set_ylim(-0.7, len(pts) - 0.3)
            ax.set_xlabel("latency (ms, log scale): dot median, line p10-p90", fontsize=9)
            ax.tick_params(axis="x", labelsize=9)
            ax.grid(True, axis="x", which="major", alpha=0.3)
    fig.suptitle("Latency per backend (hollow dot: noisy measurement)", fontsize=12)
    fig.tight_layout()
    name = "latency_by_backend.png"
    fig.savefig(out / name, dpi=120)
    plt.close(fig)
    return name


def _plot_density(result: dict, out: Path) -> str:
    import matplotlib.pyplot as plt

    color, _ = _style(result)
    fig, ax = plt.subplots(figsize=(7.5, 5))
    labels = []
    for run in result["runs"]:
        levels = run.get("imp_levels") or []
        if levels:
            xs = [max(lv["density"], 1e-6) * 100 for lv in levels if lv.get("val_acc") is not None]
            ys = [lv["val_acc"] * 100 for lv in levels if lv.get("val_acc") is not None]
            ax.plot(xs, ys, "-o", color=color[run["name"]], ms=4, lw=1.2, alpha=0.8,
                    label=f"{run['name']}: IMP levels (validation acc)")
        d = max(run.get("density", 1.0 - run["sparsity"]), 1e-6) * 100
        if run["mine_test_acc"] is not None:
            ax.scatter([d], [run["mine_test_acc"] * 100], s=70, color=color[run["name"]], edgecolor="black", zorder=3,
                       label=f"{run['name']} ({run['method']}): test acc")
            labels.append((d, run["mine_test_acc"] * 100, run["name"]))
    ax.set_xscale("log")
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _p: f"{v:g}%" if v > 0 else ""))
    ax.xaxis.set_minor_formatter(NullFormatter())
    xs = [lbl[0] for lbl in labels] + [max(lv["density"], 1e-6) * 100 for r in result["runs"] for lv in r.get("imp_levels") or []]
    if xs:
        ax.set_xlim(min(xs) / 1.8, 100 * 1.8)
    ax.set_xlabel("density (% of weights kept, log scale)", fontsize=10)
    ax.set_ylabel("accuracy (%)", fontsize=10)
    ax.set_title("Accuracy vs density: every run and every saved IMP level", fontsize=12)
    ax.grid(True, which="major", alpha=0.3)
    ax.tick_params(labelsize=9)
    ax.legend(fontsize=9, loc="lower right", framealpha=0.9)
    _spread_labels(ax, labels)
    fig.tight_layout()
    name = "accuracy_vs_density.png"
    fig.savefig(out / name, dpi=120)
    plt.close(fig)
    return name


def _plots(result: dict, out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    return [_plot_accuracy_vs_latency(result, out), _plot_latency(result, out), _plot_density(result, out)]


# --------------------------------------------------------------------------------------------- report.md
def write_outputs(result: dict, out: Path, machine: str, command: str | None = None) -> list[str]:
    """bench.json, report.md and the PNG plots in ``out``; returns the file names written."""
    import datetime

    import gemdeploy
    from gemdeploy.machine import describe_gpu

    out.mkdir(parents=True, exist_ok=True)
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    result = {**result, "machine": machine, "command": command, "gemdeploy_version": gemdeploy.__version__,
              "versions": _versions(), "timestamp": stamp}
    write_json(out / "bench.json", result)
    plots = _plots(result, out) if result["rows"] else []
    opts, cond = result["options"], result.get("conditions") or {}
    ref = result["reference"]
    load = cond.get("load_average_before")
    lines = ["# gemdeploy bench report", "",
             f"Command: `{command or 'gemdeploy bench'}`  ",
             f"Version: gemdeploy {gemdeploy.__version__} ({', '.join(f'{k} {v}' for k, v in result['versions'].items())})  ",
             f"Date: {stamp}  ", f"Machine: {machine}  ",
             *([f"GPU: {describe_gpu(result['gpu'])}  "] if result.get("gpu") else []),
             f"Latency: {opts['warmup']} warm-up then {opts['iters']} timed calls per measurement on real test images; "
             f"CPU backends on {opts['threads']} thread{'s' if opts['threads'] != 1 else ''}"
             f"{' (the default: steady numbers on a shared machine; --threads sets it)' if opts.get('threads_requested') == 1 else ''}; "
             f"a measurement whose p10-p90 range exceeds {opts['noisy_spread']:.0%} of its median is repeated with "
             f"{opts.get('remeasure_factor', 4)}x the calls and flagged **noisy** if it stays so"
             + (f"; load average {load[0]:g} before, {cond['load_average_after'][0]:g} after" if load and cond.get("load_average_after") else "")
             + ".", ""]
    text = verdict(result)
    if text:
        lines += ["## Verdict", "", text, ""]
    baseline_note = ("the dense run" if result.get("reference_is_dense") else
                     "the first run (no dense run was given: pass `--against` a `--method dense` run)")
    lines += [f"Baseline of every speed-up and Δacc: **{ref} fp32** ({baseline_note}) on the same backend and batch "
              f"(the sparse runtime, which has no fp32 file, against {ref} fp32 on ONNX Runtime of the same device); "
              "the *same precision* columns compare with "
              f"{ref} in the row's own precision. Test accuracy with its 95% Wilson interval; each Δacc with its 95% "
              "paired interval (Newcombe's, from the per-image outcomes: every run is scored on the same test "
              "images).", "", "## Runs", "",
              "| run | method | model | data | pattern | sparsity | test acc (mine) | nonzero MACs | dense MACs |",
              "|---|---|---|---|---|---|---|---|---|"]
    macs = {}
    for r in result["rows"]:
        macs.setdefault(r["run"], (r["nonzero_macs"], r["macs"]))
    for r in result["runs"]:
        nz, dense = macs.get(r["name"], (None, None))
        acc = "-" if r["mine_test_acc"] is None else f"{r['mine_test_acc']:.2%}"
        lines.append(f"| {r['name']} | {r['method']} | {r['model']} | {r['data']} | {r['pattern']} | "
                     f"{r['sparsity']:.2%} | {acc} | {_fmt_count(nz)} | {_fmt_count(dense)} |")
    lines += ["", "*nonzero MACs*: multiply-accumulates with a nonzero weight, per image; *dense MACs*: what dense "
              "kernels execute for the model's (compacted) layer shapes.", "", "## Measurements"]
    for backend in dict.fromkeys(r["backend"] for r in result["rows"]):
        rows = [r for r in result["rows"] if r["backend"] == backend]
        lines += ["", f"### {backend}", "", f"Baseline: {_baseline_of(rows)}.", "",
                  f"| run | artifact | batch | test acc | vs {ref} fp32: speed-up | Δacc | vs same precision: speed-up | Δacc "
                  "| median ms | p10-p90 ms | p99 ms | calls | img/s | nonzeros | file bytes |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in rows:
            lat = r["latency_ms"]
            flag = " **noisy**" if lat.get("noisy") else ""

            def caution(base_noisy, row_noisy=bool(lat.get("noisy"))) -> str:
                return " (noisy)" if base_noisy or row_noisy else ""

            nbytes = f"{r['file_bytes']:,}" if r["file_bytes"] else "-"
            lines.append(
                f"| {r['run']} | {r['artifact']} | {r['batch']} | {_fmt_acc(r['test_acc'], r.get('test_acc_ci'))} | "
                f"{_fmt_ratio(r['speedup_vs_dense_fp32'])}{caution(r.get('baseline_noisy'))} | "
                f"{_fmt_delta(r['acc_delta_vs_dense_fp32'], r.get('acc_delta_vs_dense_fp32_ci'))} | "
                f"{_fmt_ratio(r['speedup_vs_dense_same_precision'])}{caution(r.get('baseline_same_precision_noisy'))} | "
                f"{_fmt_delta(r['acc_delta_vs_dense_same_precision'], r.get('acc_delta_vs_dense_same_precision_ci'))} | "
                f"{_fmt_ms(lat['median'])}{flag} | {_fmt_ms(lat['p10'])}-{_fmt_ms(lat['p90'])} | {_fmt_ms(lat['p99'])} | "
                f"{lat['calls']}{' (re-measured)' if lat.get('remeasured') else ''} | {r['throughput_ips']:,.0f} | "
                f"{r['nonzero_params']:,} | {nbytes} |")
        lines += sparse24_markdown(rows)
    noisy = [r for r in result["rows"] if r["latency_ms"].get("noisy")]
    if noisy:
        lines += ["", f"{len(noisy)} of {len(result['rows'])} measurements stayed noisy after re-measuring (the machine "
                  "was busy, or the call is too short to time steadily): read their speed-ups with care."]
    if result["unavailable"]:
        lines += ["", "## Not measured", ""] + [f"- **{u['backend']}**{' (' + u['run'] + ')' if u.get('run') else ''}: "
                                                 f"{u['reason']}" for u in result["unavailable"]]
    if plots:
        lines += ["", "## Plots", ""] + [f"![{p}]({p})" for p in plots]
    atomic_write_bytes(out / "report.md", ("\n".join(lines) + "\n").encode())
    return ["bench.json", "report.md", *plots]


def _versions() -> dict:
    import importlib.metadata as md

    out = {}
    for pkg in ("torch", "onnxruntime", "onnxruntime-gpu", "tensorrt"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            continue
    return out
