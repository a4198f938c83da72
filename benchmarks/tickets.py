"""The ticket benchmark: does Gem-Miner beat IMP and the pruning-at-init baselines, and how much faster?

    nice .venv/bin/python -m benchmarks.tickets              # the CPU suite -> benchmarks/results/, BENCHMARKS.md
    .venv/bin/python -m benchmarks.tickets --quick           # a smoke run in about a minute (nothing written to BENCHMARKS.md)

Methods x models x densities x seeds, each a real `gemdeploy mine` run (in one process: the data are loaded
once and no start-up is timed), every method on its reference's recipe (gemdeploy.mine.recipes): IMP and IMP-FT
with their own init, round recipe and rewind point, their tickets trained with that recipe; every other ticket
with the shared fine-tuning. IMP is run once per seed down to the lowest density; the other densities reuse its
levels with ``--imp-from`` (their time to ticket is still the cumulative training time of every round up to that
ticket). Then ``gemdeploy sanity`` on the seed-0 tickets of Gem-Miner, SNIP, GraSP and SynFlow at 1.44%.

The budgets per model are in SUITE: what this 2-core CPU affords, stated next to every result.

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

from benchmarks.report import ROOT, finished_summary, machine, markdown_table, write_section
from gemdeploy.run.config import MineConfig
from gemdeploy.mine.pipeline import prepare
from gemdeploy.stages import mine_in
from gemdeploy.progress import Reporter
from gemdeploy.run.rundir import RunDir

RESULTS = Path(__file__).resolve().parent / "results"
SUITE_METHODS = ("gem-miner", "imp", "imp-ft", "synflow", "snip", "grasp", "random", "smart-ratio")
ALL_DENSITIES = (0.2, 0.05, 0.0144, 0.0059)
# Per model: data, mining epochs (Gem-Miner), epochs per IMP round, epochs training every ticket, densities, seeds.
# lenet300 gets open_lth's own round (40 epochs); conv4 and resnet20 what the CPU affords (a 28x28 conv4 epoch
# takes ~23 s on one core, a resnet20 epoch ~12 s); the paper's budget is the GPU benchmark's (benchmarks/gpu.py).
SUITE = {
    "lenet300": dict(data="mnist5k", epochs=40, imp_epochs=40, finetune_epochs=40, densities=ALL_DENSITIES, seeds=3),
    # conv4: IMP's 2-epoch rounds take ~25 min of a quiet 2-core machine per seed (~1 h under load)
    "conv4": dict(data="mnist5k", epochs=4, imp_epochs=2, finetune_epochs=4, densities=ALL_DENSITIES, seeds=3),
    "resnet20": dict(data="mnist5k", epochs=30, imp_epochs=5, finetune_epochs=30, densities=(0.0144,), seeds=1),
}
SANITY_METHODS = ("gem-miner", "snip", "grasp", "synflow")
SANITY_MODELS = ("lenet300", "conv4")  # a resnet20 sanity pass would cost more CPU hours than its tickets
CLAIM_BASELINES = ("random", "snip", "grasp", "synflow")


def _floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x.strip()]


def run_dir(root: Path, model: str, data: str, method: str, density: float, seed: int) -> Path:
    return root / f"{model}-{data}" / f"{method}-d{density:.4f}-s{seed}"


def one_run(cfg: MineConfig, out: Path, prepared) -> dict:
    done = finished_summary(out)
    if done is not None:
        return done
    if out.exists():  # an interrupted run: continue it
        return mine_in(cfg, RunDir.create(out, resume=True), resume=True, reporter=Reporter(enabled=False),
                        prepared=prepared)
    return mine_in(cfg, RunDir.create(out), reporter=Reporter(enabled=False), prepared=prepared)


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
                    "init": rs[0]["init"], "trained_from": rs[0]["trained_from"], "recipe": rs[0]["recipe"],
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
        for ref in ("imp", "imp-ft"):
            other = by.get((ref, d))
            if other is None:
                continue
            spread = max(gm["test_acc_std"], other["test_acc_std"])
            out.append({"model": model, "density": d, "claim": f"gem-miner >= {ref} (within seed spread)",
                        "holds": gm["test_acc_mean"] + spread >= other["test_acc_mean"],
                        "detail": f"{gm['test_acc_mean']:.2%} vs {other['test_acc_mean']:.2%} (spread {spread:.2%})"})
        beaten = [b for b in CLAIM_BASELINES if ("%s" % b, d) in by]
        worse = [b for b in beaten if by[(b, d)]["test_acc_mean"] >= gm["test_acc_mean"]]
        out.append({"model": model, "density": d, "claim": "gem-miner above " + "/".join(beaten),
                    "holds": not worse and bool(beaten),
                    "detail": ", ".join(f"{b} {by[(b, d)]['test_acc_mean']:.2%}" for b in beaten)})
        ratio = imp["ticket_epochs"] / max(gm["ticket_epochs"], 1e-9)
        wall = imp["time_to_ticket_s"] / max(gm["time_to_ticket_s"], 1e-9)
        out.append({"model": model, "density": d, "claim": ">= 10x fewer ticket epochs than imp",
                    "holds": ratio >= 10, "detail": f"{imp['ticket_epochs']:.0f} / {gm['ticket_epochs']:.0f} epochs = "
                                                    f"{ratio:.1f}x (wall time {wall:.1f}x)"})
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


def summary_record(s: dict, model: str, data: str, method: str, density: float, seed: int) -> dict:
    """What the ticket tables aggregate from one finished run's summary.json (``method`` may name a variant)."""
    training = s.get("ticket_training") or {}
    return {"model": model, "data": data, "method": method, "density_target": density, "seed": seed,
            "density": s["density"], "test_acc": s["test_acc"], "val_acc": s["val_acc"],
            "time_to_ticket_s": s["time_to_ticket_s"], "total_time_s": s["total_time_s"],
            "finetune_time_s": s["finetune_time_s"], "epochs": s["epochs"], "finetune_epochs": s["finetune_epochs"],
            "ticket_epochs": s["ticket_epochs"], "init": s["init"], "trained_from": training.get("starts_from"),
            "recipe": training.get("recipe")}


def run_unit(unit) -> list[dict]:
    """Every method and density of one (model, seed): IMP first, down to the lowest density, so the other
    densities reuse its levels."""
    model, spec, method_list, seed, runs, threads, report_only = unit
    torch.set_num_threads(threads)
    runs, data, dens = Path(runs), spec["data"], sorted(spec["densities"], reverse=True)
    started = time.perf_counter()
    prepared = prepare(MineConfig(model=model, data=data, device="cpu"))
    records = []
    for method in sorted(method_list, key=lambda m: m not in ("imp", "imp-ft")):
        deepest = None
        imp = method in ("imp", "imp-ft")
        for d in sorted(dens) if imp else dens:
            cfg = MineConfig(model=model, data=data, method=method, sparsity=round(1 - d, 10),
                             epochs=spec["imp_epochs"] if imp else spec["epochs"],
                             finetune_epochs=spec["finetune_epochs"], seed=seed, device="cpu",
                             imp_from=str(deepest) if deepest is not None else None)
            cfg = cfg.resolve(train_size=len(prepared[1].train))
            path = run_dir(runs, model, data, method, d, seed)
            if report_only and not (path / "summary.json").is_file():
                continue
            t0 = time.perf_counter()
            s = one_run(cfg, path, prepared)
            if (s["epochs"], s["finetune_epochs"]) != (cfg.epochs, cfg.finetune_epochs):
                raise SystemExit(f"{path} was run with other epochs; use another --runs directory")
            if imp and deepest is None:
                deepest = path
            records.append({**summary_record(s, model, data, method, d, seed),
                            "reused_levels": getattr(cfg, "imp_from", None) is not None, "run": str(path.relative_to(runs))})
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
    models: str = typer.Option(",".join(SUITE), help="Models of SUITE to run, comma-separated."),
    methods: str = typer.Option(",".join(SUITE_METHODS), help="Methods, comma-separated."),
    seeds: int = typer.Option(0, help="Seeds 0..N-1 (0: each model's SUITE value)."),
    threads: int = typer.Option(1, help="torch threads per worker (1 is fastest for these models on a busy 2-core box)."),
    runs: Path = typer.Option(RESULTS / "runs" / "tickets", help="Where the run directories go (kept; finished runs are skipped)."),
    out: Path = typer.Option(RESULTS, help="Where tickets.json and the plots go."),
    sanity: bool = typer.Option(True, help="Run `gemdeploy sanity` on the seed-0 tickets at 1.44%."),
    jobs: int = typer.Option(2, help="Worker processes (each runs whole (model, seed) units)."),
    report_only: bool = typer.Option(False, "--report-only", help="Run nothing new: report the finished runs under --runs."),
    quick: bool = typer.Option(False, "--quick", help="Smoke run: lenet300/mnist5k, 3 methods, 2 densities, 2 epochs."),
    markdown: bool = typer.Option(True, help="Write the Tickets section of BENCHMARKS.md."),
) -> None:
    torch.set_num_threads(threads)
    suite = {m: dict(SUITE[m]) for m in models.split(",") if m}
    method_list = [m.strip() for m in methods.split(",") if m.strip()]
    if quick:
        suite = {"lenet300": dict(data="mnist5k", epochs=2, imp_epochs=2, finetune_epochs=2, densities=(0.05, 0.0144),
                                  seeds=2)}
        method_list = ["gem-miner", "imp", "snip"]
        runs, out, markdown = runs.parent / "tickets-quick", out / "quick", False
    for spec in suite.values():
        spec["seeds"] = seeds or spec["seeds"]
    started = time.perf_counter()
    units = [(model, spec, method_list, seed, str(runs), threads, report_only)
             for model, spec in suite.items() for seed in range(spec["seeds"])]
    units.sort(key=lambda u: u[3])  # seed 0 of every model first: a cut-off suite still covers every model
    records, sanity_rows = [], []
    with _pool(jobs) as pool:
        for recs in pool.map(run_unit, units):
            records += recs
        sanity_units = [(model, spec["data"], m, 0.0144, str(runs), threads, report_only)
                        for model, spec in suite.items() if sanity and 0.0144 in spec["densities"]
                        and (model in SANITY_MODELS or quick)
                        for m in SANITY_METHODS if m in method_list]
        for rec in pool.map(run_sanity_unit, sanity_units):
            if rec is not None:
                sanity_rows.append(rec)
    wall = time.perf_counter() - started
    # What the runs cost, whenever they ran (a suite reused across sessions has no meaningful start-to-end span):
    # each run's own wall time, an IMP level chain counted once (in the deepest run that trained it).
    run_s = sum(r["finetune_time_s"] if r["reused_levels"] else r["total_time_s"] for r in records)
    agg = aggregate(records)
    pairs = [(model, spec["data"]) for model, spec in suite.items()]
    checks = [c for model, data in pairs for c in claims(agg, model, data, [0.0144, 0.0059])]
    out.mkdir(parents=True, exist_ok=True)
    plots = []
    for model, data in pairs:
        p = out / f"tickets-{model}-{data}.png"
        plot(agg, model, data, p)
        if p.is_file():
            plots.append(p)
    settings = {"suite": {m: {**spec, "densities": list(spec["densities"])} for m, spec in suite.items()},
                "runs": str(runs.relative_to(ROOT)) if runs.is_relative_to(ROOT) else runs.name,
                "methods": method_list, "jobs": jobs, "threads": threads, "report_only": report_only, "quick": quick}
    result = {"settings": settings, "machine": machine(), "suite_wall_s": wall, "run_time_s": run_s, "runs": records,
              "aggregate": agg, "claims": checks, "sanity": sanity_rows}
    (out / "tickets.json").write_text(json.dumps(result, indent=2))
    print(f"this call {wall:.0f} s, the runs' own wall time {run_s:.0f} s; "
          f"wrote {out / 'tickets.json'} and {', '.join(map(str, plots))}")
    for c in checks:
        print(f"  {'OK  ' if c['holds'] else 'MISS'} {c['model']} d={c['density']}: {c['claim']}: {c['detail']}")
    if markdown:
        write_section("tickets", render(result, plots))


def render(result: dict, plots: list[Path]) -> str:
    from gemdeploy.mine.recipes import AUTHORS_RESNET20, OPEN_LTH_LENET

    s = result["settings"]
    budget_rows = [[m, spec["data"], spec["epochs"], spec["imp_epochs"], spec["finetune_epochs"],
                    ", ".join(f"{d:.2%}" for d in spec["densities"]), spec["seeds"]] for m, spec in s["suite"].items()]
    lines = ["## Tickets: Gem-Miner against IMP and pruning at initialization, every baseline on its reference's recipe",
             "", "Command: `nice .venv/bin/python -m benchmarks.tickets` (finished runs are reused; "
             "`--report-only` re-renders)  ",
             f"Machine: {result['machine']}; {s['jobs']} worker processes x {s['threads']} torch thread; the machine was "
             "shared with development work while it ran, so wall times are inflated (every method alike).  ",
             f"Run time: **{result['run_time_s'] / 3600:.1f} h** (each run's own wall time, summed; an IMP level chain "
             "counted once).", "",
             "Budgets (epochs; batch 128; validation picks nothing here, the test split is only reported):", "",
             markdown_table(["model", "data", "Gem-Miner mining", "IMP epochs per round", "ticket training",
                             "densities", "seeds"], budget_rows), "",
             "Recipes (read from each reference's code, gemdeploy/mine/recipes.py):", "",
             "- **Gem-Miner**: signed-constant init, non-affine BatchNorm, scores U[0,1], SGD lr 0.1 cosine, lambda by "
             "density (1e-4 at <= 1.5%), freezing every 5/150 of the epochs; ticket fine-tuned from init: SGD lr 0.01, "
             "momentum 0.9, wd 1e-4, x0.1 at 53%/80%.",
             f"- **IMP** (weight rewinding) and **IMP-FT** (learning-rate rewinding), 20% of the remaining weights per "
             f"round, global magnitude, kaiming-normal init: lenet300 on {OPEN_LTH_LENET.source} (plain SGD lr 0.1, no "
             "momentum/decay/schedule, rewind to iteration 0, output layer unpruned); conv4 and resnet20 on "
             f"{AUTHORS_RESNET20.source} (SGD lr 0.1, momentum 0.9, wd 1e-4, x0.1 at 50%/75% of the round, rewind to "
             "1.6% of the round = the authors' 1,000 of 62,400 iterations, every layer pruned). IMP's ticket is trained "
             "from the rewind point with the round recipe; IMP-FT's from the last round's weights, schedule rewound.",
             "- **SNIP, GraSP, SynFlow** as Synaptic-Flow scores them (kaiming-normal, eval mode, 10 examples per class; "
             "SynFlow 100 data-free iterations, exponential schedule); **random** (uniform per layer) and "
             "**Smart-Ratio**: kaiming-normal. Their tickets get the shared fine-tuning above.",
             "- Every model has non-affine BatchNorm (exact channel compaction needs it; open_lth's LeNet has none).", "",
             "Test accuracy: mean ± standard deviation over seeds. Time to ticket: mean wall time finding the mask "
             "(IMP: every round up to the ticket, the rewind point included). Ticket epochs: training epochs spent "
             "finding the ticket (IMP: rounds x epochs + the rewind iterations; pruning at init: 0).", ""]
    for model, data in sorted({(a["model"], a["data"]) for a in result["aggregate"]}):
        rows = []
        for a in result["aggregate"]:
            if (a["model"], a["data"]) != (model, data):
                continue
            rows.append([a["method"], f"{a['density']:.2%}", a["seeds"],
                         f"{a['test_acc_mean']:.2%} ± {a['test_acc_std']:.2%}", f"{a['time_to_ticket_s']:.1f} s",
                         f"{a['ticket_epochs']:.0f}", f"{a['init']}; from {a['trained_from']}, {a['recipe']}"])
        rows.sort(key=lambda r: (-float(r[1].rstrip("%")), r[0]))
        plot = [p for p in plots if f"{model}-{data}" in p.name]
        lines += [f"### {model} / {data}", "",
                  markdown_table(["method", "density", "seeds", "test acc", "time to ticket", "ticket epochs",
                                  "init; ticket trained"], rows), ""]
        if plot:
            lines += [f"![{model} {data}](benchmarks/results/{plot[0].name})", ""]
    if result["claims"]:
        lines += ["### Targets", "", markdown_table(["model", "density", "target", "met", "measured"],
                                                    [[c["model"], f"{c['density']:.2%}", c["claim"], "yes" if c["holds"] else "**no**",
                                                      c["detail"]] for c in result["claims"]]), ""]
    if result["sanity"]:
        cols = ["shuffle", "reinit", "invert"]
        lines += ["### Sanity checks (`gemdeploy sanity`, seed 0, 1.44%)", "",
                  "Each check trained exactly as the method trains its ticket. invert: Gem-Miner re-mined with the "
                  "freezing order reversed (layer densities kept); SNIP/GraSP/SynFlow the lowest scores per layer.", "",
                  markdown_table(["model", "method", "density", "ticket"] + cols,
                                 [[r["model"], r["method"], f"{r['density']:.2%}", f"{r['original']:.2%}"]
                                  + [f"{r[c]:.2%}" if c in r else "n/a" for c in cols] for r in result["sanity"]]), ""]
    return "\n".join(lines)


if __name__ == "__main__":
    typer.run(main)
