"""The ticket benchmark: does Gem-Miner beat IMP and the pruning-at-init baselines, and how much faster?

    nice .venv/bin/python -m benchmarks.tickets              # the CPU suite -> benchmarks/results/, BENCHMARKS.md
    .venv/bin/python -m benchmarks.tickets --quick           # a smoke run in about a minute (nothing written to BENCHMARKS.md)

Methods x models x densities x seeds, each a real `gemdeploy mine` run (in one process: the data are
loaded once and no start-up is timed) with the same fine-tuning recipe. IMP is run once per seed down to
the lowest density; the other densities reuse its levels with ``--imp-from`` (their time to ticket is still
the cumulative training time of every round up to that ticket). Then ``gemdeploy sanity`` on the seed-0
tickets of Gem-Miner, SNIP, GraSP and SynFlow at one density.

Writes ``tickets.json`` (every run and the mean/std over seeds), ``tickets-<model>-<data>.png`` (test accuracy
against density, log x, one line per method, seed spread as error bars) and the "Tickets" section of
BENCHMARKS.md. Finished runs are kept under ``--runs`` (benchmarks/results/runs/, git-ignored) and skipped when the benchmark is re-run, so an
interrupted suite continues where it stopped. Only the validation split is used to choose anything;
the test split is only reported.
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

import torch
import typer

from benchmarks.report import machine, markdown_table, write_section
from gemdeploy.run.config import MineConfig
from gemdeploy.mine.pipeline import prepare, run_mine
from gemdeploy.progress import Reporter
from gemdeploy.run.rundir import RunDir

RESULTS = Path(__file__).resolve().parent / "results"
SUITE_METHODS = "gem-miner,imp,random,snip,grasp,synflow,magnitude,smart-ratio,edge-popup"
# model:data[:mining epochs[:fine-tuning epochs[:methods joined by +]]]; conv4 runs on the 8x8 digits because
# a conv4 epoch on 28x28 mnist5k takes ~50 s on this CPU (IMP to 0.59% alone would take over 3 hours).
SUITE_TARGETS = "lenet300:mnist5k:15:15,conv4:digits:4:8:gem-miner+imp+random+snip+grasp+synflow"
DENSITIES = "0.2,0.05,0.0144,0.0059"
SANITY_METHODS = ("gem-miner", "snip", "grasp", "synflow")
CLAIM_BASELINES = ("random", "snip", "grasp", "synflow")


def _floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x.strip()]


def run_dir(root: Path, model: str, data: str, method: str, density: float, seed: int) -> Path:
    return root / f"{model}-{data}" / f"{method}-d{density:.4f}-s{seed}"


def one_run(cfg: MineConfig, out: Path, prepared) -> dict:
    if (out / "summary.json").is_file():
        return json.loads((out / "summary.json").read_text())
    if out.exists():  # an interrupted run: continue it
        return run_mine(cfg, RunDir.create(out, resume=True), resume=True, reporter=Reporter(enabled=False),
                        prepared=prepared)
    return run_mine(cfg, RunDir.create(out), reporter=Reporter(enabled=False), prepared=prepared)


def ticket_epochs(summary: dict) -> int:
    """Training epochs spent finding the ticket (IMP: every round; pruning at init: none)."""
    method, ticket = summary["method"], summary["ticket"]
    if method in ("imp", "imp-ft"):
        return ticket["rounds"] * summary["epochs"]
    if method in ("gem-miner", "edge-popup"):
        return summary["epochs"]
    return 0


def aggregate(runs: list[dict]) -> list[dict]:
    groups: dict[tuple, list[dict]] = {}
    for r in runs:
        groups.setdefault((r["model"], r["data"], r["method"], r["density_target"]), []).append(r)
    out = []
    for (model, data, method, density), rs in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][2], -kv[0][3])):
        acc = [r["test_acc"] for r in rs]
        val = [r["val_acc"] for r in rs]
        ttt = [r["time_to_ticket_s"] for r in rs]
        out.append({"model": model, "data": data, "method": method, "density": density, "seeds": len(rs),
                    "test_acc_mean": statistics.mean(acc), "test_acc_std": statistics.stdev(acc) if len(acc) > 1 else 0.0,
                    "val_acc_mean": statistics.mean(val),
                    "time_to_ticket_s": statistics.mean(ttt), "total_time_s": statistics.mean(r["total_time_s"] for r in rs),
                    "ticket_epochs": rs[0]["ticket_epochs"], "epochs": rs[0]["epochs"], "finetune_epochs": rs[0]["finetune_epochs"],
                    "achieved_density": statistics.mean(r["density"] for r in rs)})
    return out


def claims(agg: list[dict], model: str, data: str, densities: list[float]) -> list[dict]:
    """The issue's targets, checked on the measured means (std = spread over seeds)."""
    by = {(a["method"], a["density"]): a for a in agg if a["model"] == model and a["data"] == data}
    out = []
    for d in densities:
        gm, imp = by.get(("gem-miner", d)), by.get(("imp", d))
        if gm is None or imp is None:
            continue
        spread = max(gm["test_acc_std"], imp["test_acc_std"])
        out.append({"model": model, "density": d, "claim": "gem-miner >= imp (within seed spread)",
                    "holds": gm["test_acc_mean"] + spread >= imp["test_acc_mean"],
                    "detail": f"{gm['test_acc_mean']:.2%} vs {imp['test_acc_mean']:.2%} (spread {spread:.2%})"})
        beaten = [b for b in CLAIM_BASELINES if ("%s" % b, d) in by]
        worse = [b for b in beaten if by[(b, d)]["test_acc_mean"] >= gm["test_acc_mean"]]
        out.append({"model": model, "density": d, "claim": "gem-miner above " + "/".join(beaten),
                    "holds": not worse and bool(beaten),
                    "detail": ", ".join(f"{b} {by[(b, d)]['test_acc_mean']:.2%}" for b in beaten)})
        if abs(d - 0.0144) < 1e-9:
            ratio = imp["time_to_ticket_s"] / max(gm["time_to_ticket_s"], 1e-9)
            out.append({"model": model, "density": d, "claim": "time to ticket >= 10x shorter than imp",
                        "holds": ratio >= 10, "detail": f"{imp['time_to_ticket_s']:.1f} s / {gm['time_to_ticket_s']:.1f} s = {ratio:.1f}x"})
    return out


def plot(agg: list[dict], model: str, data: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    rows = [a for a in agg if a["model"] == model and a["data"] == data]
    if not rows:
        return
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for method in sorted({a["method"] for a in rows}):
        pts = sorted((a["density"], a["test_acc_mean"], a["test_acc_std"]) for a in rows if a["method"] == method)
        ax.errorbar([p[0] * 100 for p in pts], [p[1] * 100 for p in pts], yerr=[p[2] * 100 for p in pts],
                    marker="o", capsize=3, label=method, linewidth=2.5 if method == "gem-miner" else 1.2)
    ax.set_xscale("log")
    ticks = sorted({a["density"] for a in rows})
    ax.set_xticks([t * 100 for t in ticks])
    ax.set_xticklabels([f"{t * 100:g}%" for t in ticks])
    ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
    ax.set_xlabel("density (% of prunable weights kept, log scale)")
    ax.set_ylabel("test accuracy (%) after fine-tuning")
    ax.set_title(f"{model} / {data}: mean and spread over {max(a['seeds'] for a in rows)} seeds")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _pool(jobs: int):
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    return ProcessPoolExecutor(max_workers=max(1, jobs), mp_context=mp.get_context("spawn"))


def run_unit(unit) -> list[dict]:
    """Every method and density of one (model, data, seed): IMP first, down to the lowest density, so the
    other densities reuse its levels."""
    model, data, epochs, finetune_epochs, method_list, dens, seed, runs, threads, report_only = unit
    torch.set_num_threads(threads)
    runs = Path(runs)
    started = time.perf_counter()
    prepared = prepare(MineConfig(model=model, data=data, device="cpu"))
    records = []
    for method in sorted(method_list, key=lambda m: m not in ("imp", "imp-ft")):
        deepest = None
        for d in sorted(dens) if method in ("imp", "imp-ft") else dens:
            cfg = MineConfig(model=model, data=data, method=method, sparsity=round(1 - d, 10), epochs=epochs,
                             finetune_epochs=finetune_epochs, seed=seed, device="cpu",
                             imp_from=str(deepest) if deepest is not None else None)
            path = run_dir(runs, model, data, method, d, seed)
            if report_only and not (path / "summary.json").is_file():
                continue
            t0 = time.perf_counter()
            s = one_run(cfg, path, prepared)
            if (s["epochs"], s["finetune_epochs"]) != (epochs, finetune_epochs):
                raise SystemExit(f"{path} was run with other epochs; use another --runs directory")
            if method in ("imp", "imp-ft") and deepest is None:
                deepest = path
            records.append({"model": model, "data": data, "method": method, "density_target": d, "seed": seed,
                            "density": s["density"], "test_acc": s["test_acc"], "val_acc": s["val_acc"],
                            "time_to_ticket_s": s["time_to_ticket_s"], "total_time_s": s["total_time_s"],
                            "finetune_time_s": s["finetune_time_s"], "epochs": s["epochs"],
                            "finetune_epochs": s["finetune_epochs"], "ticket_epochs": ticket_epochs(s), "run": str(path)})
            print(f"[{time.perf_counter() - started:7.1f} s] {model}/{data} {method:11s} d={d:.4f} seed={seed} "
                  f"test={s['test_acc']:.4f} ttt={s['time_to_ticket_s']:.1f}s ({time.perf_counter() - t0:.1f}s)",
                  flush=True)
    return records


def run_sanity_unit(unit) -> dict | None:
    from gemdeploy.mine.sanity import run_sanity

    model, data, method, density, runs, threads, report_only = unit
    torch.set_num_threads(threads)
    path = run_dir(Path(runs), model, data, method, density, 0)
    if not (path / "summary.json").is_file() or (report_only and not (path / "sanity.json").is_file()):
        return None
    res = run_sanity(path, device="cpu")
    rec = {"model": model, "data": data, "method": method, "density": density, "original": res["original"]["test_acc"],
           **{k: v["test_acc"] for k, v in res["checks"].items()}}
    print(f"sanity {model}/{data} {method}: {json.dumps(rec)}", flush=True)
    return rec


def main(
    targets: str = typer.Option(SUITE_TARGETS, help="model:data[:epochs[:finetune-epochs[:m1+m2...]]], comma-separated."),
    methods: str = typer.Option(SUITE_METHODS, help="Methods, comma-separated (imp-ft is available too)."),
    densities: str = typer.Option(DENSITIES, help="Densities (fraction kept), comma-separated."),
    seeds: int = typer.Option(3, help="Seeds 0..N-1 per (method, density)."),
    epochs: int = typer.Option(20, help="Mining epochs (Gem-Miner, edge-popup) = training epochs per IMP round."),
    finetune_epochs: int = typer.Option(20, help="Fine-tuning epochs, the same for every method."),
    threads: int = typer.Option(1, help="torch threads (1 is fastest for these small models on a busy 2-core box)."),
    runs: Path = typer.Option(RESULTS / "runs" / "tickets", help="Where the run directories go (kept; finished runs are skipped)."),
    out: Path = typer.Option(RESULTS, help="Where tickets.json and the plots go."),
    sanity_density: float = typer.Option(0.0144, help="Density of the tickets the sanity checks run on (0 = none)."),
    jobs: int = typer.Option(2, help="Worker processes (each runs whole (target, seed) units with --threads threads)."),
    report_only: bool = typer.Option(False, "--report-only", help="Run nothing new: report the finished runs under --runs."),
    quick: bool = typer.Option(False, "--quick", help="Smoke run: lenet300/digits, 2 methods + IMP, 2 densities, 2 epochs."),
    markdown: bool = typer.Option(True, help="Write the Tickets section of BENCHMARKS.md."),
) -> None:
    torch.set_num_threads(threads)
    if quick:
        targets, methods, densities, seeds, epochs, finetune_epochs = "lenet300:digits", "gem-miner,imp,snip", "0.05,0.0144", 2, 2, 2
        runs, out, markdown, sanity_density = runs.parent / "tickets-quick", out / "quick", False, 0.0144
    method_list = [m.strip() for m in methods.split(",") if m.strip()]
    dens = sorted(_floats(densities), reverse=True)
    started = time.perf_counter()
    units = []
    for target in targets.split(","):
        parts = target.split(":")
        e = int(parts[2]) if len(parts) > 2 else epochs
        f = int(parts[3]) if len(parts) > 3 else finetune_epochs
        ms = parts[4].split("+") if len(parts) > 4 else method_list
        units += [(parts[0], parts[1], e, f, ms, dens, seed, str(runs), threads, report_only) for seed in range(seeds)]
    records, sanity = [], []
    with _pool(jobs) as pool:
        for recs in pool.map(run_unit, units):
            records += recs
        sanity_units = [(model, data, m, sanity_density, str(runs), threads, report_only)
                        for model, data, _, _, ms, _, seed, _, _, _ in units if seed == 0 and sanity_density > 0
                        for m in SANITY_METHODS if m in ms]
        for rec in pool.map(run_sanity_unit, sanity_units):
            if rec is not None:
                sanity.append(rec)
    wall = time.perf_counter() - started
    if report_only and records:  # the suite's wall time, from its run directories' timestamps
        paths = [Path(r["run"]) for r in records]
        wall = max((p / "summary.json").stat().st_mtime for p in paths) - min((p / "config.json").stat().st_mtime for p in paths)
    agg = aggregate(records)
    pairs = [tuple(t.split(":")[:2]) for t in targets.split(",")]
    checks = [c for model, data in pairs for c in claims(agg, model, data, [d for d in dens if d <= 0.0144 + 1e-9])]
    out.mkdir(parents=True, exist_ok=True)
    plots = []
    for model, data in pairs:
        p = out / f"tickets-{model}-{data}.png"
        plot(agg, model, data, p)
        plots.append(p)
    settings = {"targets": targets, "jobs": jobs, "report_only": report_only, "methods": method_list, "densities": dens, "seeds": seeds, "epochs": epochs,
                "finetune_epochs": finetune_epochs, "threads": threads, "quick": quick}
    result = {"settings": settings, "machine": machine(), "suite_wall_s": wall, "runs": records, "aggregate": agg,
              "claims": checks, "sanity": sanity}
    (out / "tickets.json").write_text(json.dumps(result, indent=2))
    print(f"suite wall time {wall:.0f} s; wrote {out / 'tickets.json'} and {', '.join(map(str, plots))}")
    for c in checks:
        print(f"  {'OK  ' if c['holds'] else 'MISS'} {c['model']} d={c['density']}: {c['claim']}: {c['detail']}")
    if markdown:
        write_section("tickets", render(result, plots))


def render(result: dict, plots: list[Path]) -> str:
    s = result["settings"]
    lines = ["## Tickets: Gem-Miner against IMP and pruning at initialization", "",
             "Command: `nice .venv/bin/python -m benchmarks.tickets`  ",
             f"Machine: {result['machine']}; torch threads: {s['threads']}; shared with other jobs (load average "
             "well above the core count during the run, so wall times are inflated; every method shares the same conditions)  ",
             f"Targets (model:data:mining epochs:fine-tuning epochs:methods): `{s['targets']}`. Mining epochs are Gem-Miner's "
             "and edge-popup's epochs and the training epochs of every IMP round; fine-tuning is the same for every method "
             f"(SGD 0.01, momentum 0.9, wd 1e-4, x0.1 at 53%/80%); batch 128; seeds 0..{s['seeds'] - 1}; "
             f"{s['jobs']} worker processes x {s['threads']} thread. Suite wall time: **{result['suite_wall_s'] / 60:.1f} min**.", "",
             "Test accuracy is the mean ± standard deviation over seeds; time to ticket is the mean wall time spent finding "
             "the mask (IMP: all rounds up to the ticket, rewind phase included); epochs are the training epochs spent "
             "finding the ticket (fine-tuning excluded).", ""]
    for model, data in sorted({(a["model"], a["data"]) for a in result["aggregate"]}):
        rows = []
        for a in result["aggregate"]:
            if (a["model"], a["data"]) != (model, data):
                continue
            rows.append([a["method"], f"{a['density']:.2%}", a["seeds"], f"{a['test_acc_mean']:.2%} ± {a['test_acc_std']:.2%}",
                         f"{a['time_to_ticket_s']:.1f} s", f"{a['total_time_s']:.1f} s", a["ticket_epochs"]])
        rows.sort(key=lambda r: (-float(r[1].rstrip("%")), r[0]))
        lines += [f"### {model} / {data}", "",
                  markdown_table(["method", "density", "seeds", "test acc", "time to ticket", "total time", "ticket epochs"], rows),
                  "", f"![{model} {data}](benchmarks/results/{[p for p in plots if f'{model}-{data}' in p.name][0].name})", ""]
    if result["claims"]:
        lines += ["### Targets", "", markdown_table(["model", "density", "target", "met", "measured"],
                                                    [[c["model"], f"{c['density']:.2%}", c["claim"], "yes" if c["holds"] else "**no**",
                                                      c["detail"]] for c in result["claims"]]), ""]
    if result["sanity"]:
        cols = ["shuffle", "reinit", "invert"]
        lines += ["### Sanity checks (`gemdeploy sanity`, seed 0)", "",
                  markdown_table(["model", "method", "density", "ticket"] + cols,
                                 [[r["model"], r["method"], f"{r['density']:.2%}", f"{r['original']:.2%}"]
                                  + [f"{r[c]:.2%}" if c in r else "n/a" for c in cols] for r in result["sanity"]]), ""]
    return "\n".join(lines)


if __name__ == "__main__":
    typer.run(main)
