"""`gemdeploy tune` as steps on a tune directory:

    OUT/dense/                 the dense reference (or --dense RUN), exported for every backend
    OUT/candidates/NAME/       one ordinary run directory per candidate (`export` and `bench` accept it)
    OUT/measure-N/bench.json   each round's measurement: the dense model and that round's candidates side by side
    OUT/tune.json, tune.png    the candidates, the Pareto front, the pick and why, what was not tried

A round mines, trains and exports its candidates (a finished one is reused; an interrupted one resumes), then
measures them next to the dense model in one bench call, so every speed-up is a ratio taken in one process under
one load. Candidates are chosen on validation accuracy; the pick's test accuracy is reported once, beside the
dense model's.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Callable

from gemdeploy.errors import GemdeployError
from gemdeploy.files import atomic_write_bytes
from gemdeploy.run.rundir import RunDir, sweep_debris
from gemdeploy.tune.config import TuneOptions
from gemdeploy.tune.search import (ROUNDINGS, Candidate, Goal, coarse_grid, drop_points, pareto_front, patterns_for,
                                   pick, refine)

TUNE_JSON, TUNE_PLOT = "tune.json", "tune.png"
DENSE_DIR, CANDIDATES_DIR = "dense", "candidates"
# What each backend runs from a run directory (`gemdeploy export --precision ...`); PyTorch runs the run itself.
EXPORTS = {"onnxruntime-cpu": ["fp32"], "onnxruntime-cuda": ["fp32"], "sparse-cpu": ["sparse-cpu"],
           "sparse-cpu-torch": ["sparse-cpu"], "tensorrt": ["fp32"]}


def _precisions(backends: list[str]) -> list[str]:
    return sorted({p for b in backends for p in EXPORTS.get(b, [])})


def _speedup(row: dict) -> float | None:
    """A bench row's speed-up over the dense model's fp32, as bench defines it (the sparse runtime against ONNX
    Runtime's), else over the dense model in the row's own precision."""
    return row.get("speedup_vs_dense_fp32") or row.get("speedup_vs_dense_same_precision")


def _summary(run: Path) -> dict | None:
    f = run / "summary.json"
    return json.loads(f.read_text()) if f.is_file() else None


def search_patterns(opts: TuneOptions) -> list[str]:
    """The patterns this tune searches: those worth it on the backends (or asked for) that the method can find."""
    from gemdeploy.mine.methods import METHODS

    found = METHODS.get(opts.method).patterns
    patterns = patterns_for(opts.backend, opts.pattern, found)
    if not patterns:
        wanted = patterns_for(opts.backend, opts.pattern)
        raise GemdeployError(f"--method {opts.method} finds {', '.join(found)} tickets only, and none of them pays on "
                             f"{', '.join(opts.backend)} (searched: {', '.join(wanted)}); add a --backend that runs "
                             "it (e.g. sparse-cpu for unstructured), ask for it with --pattern, or choose another "
                             "--method")
    return patterns


def speedless_layers(run: Path) -> list[dict]:
    """The layers of a channel ticket whose pruned channels compaction could not remove (their count is tied to a
    layer that keeps them, or the rounding keeps them): accuracy paid for no speed. From compact.json."""
    summary, record_file = _summary(run), run / "compact.json"
    if not summary or summary.get("pattern") != "channel" or not record_file.is_file():
        return []
    record = json.loads(record_file.read_text())
    return [{"layer": r["layer"], "type": r.get("type"), "pruned": round(1 - r["density_before"], 4),
             "shape": [r["in_before"], r["out_before"]], "round_to": record.get("round_to")}
            for r in record.get("layers", [])
            if r.get("density_before", 1.0) < 0.999 and r["out_after"] == r["out_before"]
            and r["in_after"] == r["in_before"]]


class Tune:
    def __init__(self, opts: TuneOptions, out: Path, resume: bool, progress: Callable[[str], None]):
        self.opts, self.out, self.progress = opts, Path(out), progress
        self.goal = Goal(opts.max_drop, opts.target_speedup, opts.target_latency_ms)
        self.started = time.monotonic()
        self.state = self._open(resume)
        self.spent_before = float(self.state.get("seconds", 0.0))

    # --- bookkeeping -------------------------------------------------------------------------------------------
    def _open(self, resume: bool) -> dict:
        state_file = self.out / TUNE_JSON
        if resume and not state_file.is_file():
            raise GemdeployError(f"{self.out} holds no tune to resume ({TUNE_JSON} is missing)")
        if not resume:
            RunDir.create(self.out, description="tune directory")  # refuses an existing folder, writes the marker
            return {"candidates": {}, "rounds": 0, "seconds": 0.0}
        sweep_debris(self.out)  # temp files of an interrupted write
        state = json.loads(state_file.read_text())
        before = state.get("options", {})
        changed = [k for k in TuneOptions.SAME_SEARCH if k in before and before[k] != getattr(self.opts, k)]
        if changed:
            raise GemdeployError(f"{self.out} was tuned with --{changed[0].replace('_', '-')} {before[changed[0]]}; "
                                 "resume it with the same search options (the goal, the budget and the batch size "
                                 "may change)")
        if before.get("batch_size") not in (None, self.opts.batch_size):
            # Latency depends on the batch: keep every mined candidate, measure them all again, budget anew.
            for rec in state["candidates"].values():
                for key in ("backends", "measured_in"):
                    rec.pop(key, None)
            state.pop("dense", None)
            state.update({"seconds": 0.0, "recipes_tried": [], "result": None})
        return state

    def elapsed(self) -> float:
        return self.spent_before + time.monotonic() - self.started

    def left(self) -> float:
        return self.opts.budget_s - self.elapsed()

    def save(self, extra: dict | None = None) -> None:
        self.state.update({"options": dataclasses.asdict(self.opts), "seconds": self.elapsed(), **(extra or {})})
        atomic_write_bytes(self.out / TUNE_JSON, json.dumps(self.state, indent=2).encode())

    # --- steps -------------------------------------------------------------------------------------------------
    def mine_options(self) -> dict:
        o = self.opts
        extra = {"data_dir": o.data_dir} if o.data_dir else {}
        return {"seed": o.seed, "device": o.device, "epochs": o.epochs, "finetune_epochs": o.finetune_epochs, **extra}

    def _mine(self, out: Path, **options) -> Path:
        """`gemdeploy mine` (resumed when interrupted, skipped when finished), then `export` what the backends run."""
        from gemdeploy import stages
        from gemdeploy.progress import Reporter
        from gemdeploy.run.config import MineConfig

        quiet = Reporter(enabled=False)  # tune reports per candidate, not per epoch
        if (out / "config.json").is_file():  # the chain skips each stage already done (a finished run: all)
            stages.mine(out, None, resume=True, reporter=quiet, keep_finished=True)
        else:
            cfg = MineConfig(model=self.opts.model, data=self.opts.data, **self.mine_options(), **options)
            stages.mine(out, cfg.validate().check_files(), reporter=quiet)
        self._export(out)
        return out

    def _export(self, run: Path) -> None:
        """The files the backends run (an export adds only the precisions the run lacks)."""
        from gemdeploy.exporters.config import ExportOptions
        from gemdeploy.exporters.pipeline import export_run

        precisions = _precisions(self.opts.backend)
        if precisions:
            export_run(run, ExportOptions(precision=precisions))

    def dense(self) -> Path:
        if self.opts.dense:
            path = Path(self.opts.dense)
            summary = _summary(path)
            if summary is None:
                raise GemdeployError(f"--dense {path} is not a finished run (no summary.json)")
            if summary["method"] != "dense":
                raise GemdeployError(f"--dense {path} is a {summary['method']} run; it needs `--method dense`")
            if (summary["model"], summary["data"]) != (self.opts.model, self.opts.data) and \
                    (Path(str(summary["model"])).name, summary["data"]) != (self.opts.model, self.opts.data):
                raise GemdeployError(f"--dense {path} is {summary['model']} on {summary['data']}, not "
                                     f"{self.opts.model} on {self.opts.data}")
            self.progress(f"dense reference: {path} (reused)")
            self._export(path)
            return path
        self.progress("training the dense reference")
        return self._mine(self.out / DENSE_DIR, method="dense")

    def candidate(self, c: Candidate) -> Path:
        out = self.out / CANDIDATES_DIR / c.name
        self.progress(f"candidate {c.name}")
        t0 = time.monotonic()
        if c.mined_as != c:
            self._recompacted(Path(self.state["candidates"][c.mined_as.name]["path"]), out, c.round_to)
        else:
            self._mine(out, method=self.opts.method, pattern=c.pattern, sparsity=c.sparsity,
                       finetune_lr=c.finetune_lr, **self._chain(c))
        record = self.state["candidates"].setdefault(c.name, {**c.to_json(), "path": str(out)})
        record.setdefault("seconds", time.monotonic() - t0)
        summary = _summary(out)
        record["val_acc"], record["weight_sparsity"] = summary["val_acc"], summary["sparsity"]
        record["speedless_layers"] = speedless_layers(out)
        return out

    def _chain(self, c: Candidate) -> dict:
        """IMP gives every density from one chain of levels: a candidate continues the sparsest IMP candidate
        already mined (its levels up to this density are this one's, the same trajectory)."""
        if self.opts.method != "imp":
            return {}
        done = [r for r in self.state["candidates"].values()
                if r["pattern"] == c.pattern and r.get("round_to", ROUNDINGS[0]) == ROUNDINGS[0]
                and _summary(Path(r["path"])) is not None]
        return {"imp_from": max(done, key=lambda r: r["sparsity"])["path"]} if done else {}

    def _recompacted(self, source: Path, out: Path, round_to: int) -> None:
        """A rounding variant: ``source``'s ticket, copied, compacted with ``round_to`` and exported (no mining;
        compaction is exact, so its accuracy is the source's)."""
        import shutil

        from gemdeploy import stages
        from gemdeploy.compact.compaction import RECORD, WEIGHTS
        from gemdeploy.files import read_json
        from gemdeploy.run import layout

        if not (out / RECORD).is_file():
            if out.exists():
                shutil.rmtree(out)  # an interrupted copy: make it again
            tmp = out.with_name(out.name + ".partial")
            shutil.rmtree(tmp, ignore_errors=True)
            shutil.copytree(source, tmp, ignore=shutil.ignore_patterns(RECORD, WEIGHTS, layout.EXPORT_DIR, "bench"))
            config = read_json(tmp / layout.CONFIG)
            config["round_to"] = round_to  # a resumed or re-run compaction of the copy keeps this rounding
            atomic_write_bytes(tmp / layout.CONFIG, json.dumps(config, indent=2).encode())
            stages.compact(tmp)  # the chain's compact stage, at that rounding, its totals into the copy's summary
            tmp.rename(out)
        self._export(out)

    def measure(self, dense: Path, names: list[str]) -> None:
        """One bench call: the dense model and ``names`` side by side on every backend at the asked batch."""
        from gemdeploy.bench.config import BenchOptions
        from gemdeploy.bench.measure import measure

        o = self.opts
        runs = [dense] + [Path(self.state["candidates"][n]["path"]) for n in names]
        self.progress(f"measuring {len(names)} candidate(s) next to dense on {', '.join(o.backend)}")
        result = measure(runs, BenchOptions(batch_size=[o.batch_size], backend=list(o.backend), iters=o.iters,
                                            warmup=o.warmup, threads=o.threads))
        self.state["rounds"] = self.state.get("rounds", 0) + 1
        folder = self.out / f"measure-{self.state['rounds']}"
        folder.mkdir(exist_ok=True)
        atomic_write_bytes(folder / "bench.json", json.dumps(result, indent=2).encode())
        by_run = {}
        for row in result["rows"]:
            by_run.setdefault(row["run"], []).append(row)
        dense_name = dense.name
        dense_rows = {r["backend"]: r for r in by_run.get(dense_name, [])}
        self.state.setdefault("dense", {}).update({
            "path": str(dense), "val_acc": _summary(dense)["val_acc"], "test_acc_by_backend": {
                b: r["test_acc"] for b, r in dense_rows.items()},
            "latency_ms": {b: r["latency_ms"]["median"] for b, r in dense_rows.items()},
            "speedup": {b: _speedup(r) for b, r in dense_rows.items()}})
        for n in names:
            rec = self.state["candidates"][n]
            rec["measured_in"] = str(folder / "bench.json")
            rec["backends"] = {}
            for row in by_run.get(n, []):
                speedup = _speedup(row)
                rec["backends"][row["backend"]] = {
                    "latency_ms": row["latency_ms"]["median"], "p10_ms": row["latency_ms"]["p10"],
                    "p90_ms": row["latency_ms"]["p90"], "noisy": row["latency_ms"]["noisy"], "speedup": speedup,
                    "baseline": row.get("baseline") or row.get("baseline_same_precision"),
                    "file_bytes": row.get("file_bytes"), "test_acc": row["test_acc"], "artifact": row["artifact"],
                    "test_delta": row.get("acc_delta_vs_dense_fp32_ci") or row.get(
                        "acc_delta_vs_dense_same_precision_ci")}

    # --- the search --------------------------------------------------------------------------------------------
    def options(self) -> list[dict]:
        """Every measured (candidate or dense) x backend pair as an option."""
        out = []
        dense = self.state.get("dense", {})
        for b, lat in dense.get("latency_ms", {}).items():
            out.append({"name": "dense", "backend": b, "val_acc": dense["val_acc"], "latency_ms": lat,
                        "speedup": dense.get("speedup", {}).get(b) or 1.0, "pattern": "dense", "sparsity": 0.0})
        for name, rec in self.state["candidates"].items():
            for b, m in rec.get("backends", {}).items():
                out.append({"name": name, "backend": b, "val_acc": rec["val_acc"], "latency_ms": m["latency_ms"],
                            "speedup": m["speedup"], "pattern": rec["pattern"], "sparsity": rec["sparsity"],
                            "finetune_lr": rec["finetune_lr"], "round_to": rec.get("round_to", ROUNDINGS[0]),
                            "file_bytes": m.get("file_bytes")})
        return out

    def meets(self, name: str) -> bool:
        """Does any backend of candidate ``name`` meet the goal (for refinement)?"""
        dense_val = self.state["dense"]["val_acc"]
        return any(self.goal.meets(o, dense_val) for o in self.options() if o["name"] == name)

    def val_images(self) -> int | None:
        """How many validation images every accuracy was measured on (its interval's n); once per tune."""
        if "val_images" not in self.state:
            from gemdeploy.data import load_data

            try:
                data = load_data(self.opts.data, self.opts.data_dir)
                self.state["val_images"] = len(data.val) if data.real else None
            except GemdeployError:
                self.state["val_images"] = None
        return self.state["val_images"]

    def run(self) -> dict:
        o = self.opts
        patterns = search_patterns(o)
        dense = self.dense()
        if "latency_ms" not in self.state.get("dense", {}):
            self.measure(dense, [])  # the reference is measured even when the budget allows no candidate
            self.save()
        # Finished candidates without figures (a new batch size, or a tune stopped between mining and measuring):
        # measured first, all in one call, so every one of them is an option again whatever the search visits.
        stale = [n for n, r in self.state["candidates"].items()
                 if "backends" not in r and _summary(Path(r["path"])) is not None]
        if stale:
            self.measure(dense, stale)
            self.save()
        lr0, other_lrs = o.finetune_lr[0], list(o.finetune_lr[1:])
        queue = coarse_grid(patterns, lr0)
        tried_recipes: set[str] = set(self.state.get("recipes_tried", []))
        untried: list[str] = []
        while queue:
            done = []
            for i, c in enumerate(queue):
                estimate = self._estimate()
                if self.left() < estimate:
                    untried += [q.name for q in queue[i:]]
                    break
                self.candidate(c)
                done.append(c.name)
                self.save()
            fresh = [n for n in done if "backends" not in self.state["candidates"][n]]
            # A rounding variant is timed beside its source in the same call: their gap is the rounding's alone.
            sources = [self._source_of(n) for n in fresh]
            fresh += list(dict.fromkeys(s for s in sources if s is not None and s not in fresh))
            if fresh:
                self.measure(dense, fresh)
                self.save()
            if untried:
                break
            queue = self._next_round(patterns, lr0, other_lrs, tried_recipes)
            self.state["recipes_tried"] = sorted(tried_recipes)
        return self.finish(untried)

    def _estimate(self) -> float:
        """Seconds one more candidate will take: the mean of the ones this tune made (0 before the first)."""
        times = [r["seconds"] for r in self.state["candidates"].values() if "seconds" in r]
        return sum(times) / len(times) if times else 0.0

    def _next_round(self, patterns: list[str], lr0: float, other_lrs: list[float], tried_recipes: set[str]) -> list:
        queue = []
        for p in patterns:
            recs = [r for r in self.state["candidates"].values() if r["pattern"] == p and r["finetune_lr"] == lr0
                    and "backends" in r and r.get("round_to", ROUNDINGS[0]) == ROUNDINGS[0]]
            measured = {r["sparsity"]: self.meets(r["name"]) for r in recs}
            nxt = refine(p, lr0, measured, set(measured))
            if nxt is not None:
                queue.append(Candidate(p, nxt, lr0))
                continue
            # The frontier of this pattern is found: try the other ticket recipes on its best candidate.
            good = [r for r in recs if measured.get(r["sparsity"])]
            best = max(good, key=lambda r: r["sparsity"]) if good else (
                max(recs, key=lambda r: r["val_acc"]) if recs else None)
            recipes = []
            for lr in other_lrs:
                if best is None:
                    break
                key = f"{p}@{best['sparsity']}@{lr}"
                if key not in tried_recipes:
                    tried_recipes.add(key)
                    recipes.append(Candidate(p, best["sparsity"], lr))
            # Last, once every recipe of the channel pattern is measured: the channel roundings of its best.
            queue += recipes or (self._roundings(tried_recipes) if p == "channel" and best is not None else [])
        return [c for c in queue if c.name not in self.state["candidates"] or
                "backends" not in self.state["candidates"][c.name]]

    def _source_of(self, name: str) -> str | None:
        """The candidate a rounding variant was compacted from (None for a mined candidate)."""
        rec = self.state["candidates"][name]
        c = Candidate(rec["pattern"], rec["sparsity"], rec["finetune_lr"], rec.get("round_to", ROUNDINGS[0]))
        return c.mined_as.name if c.mined_as != c else None

    def _roundings(self, tried: set[str]) -> list[Candidate]:
        """Once the channel search is done: its fastest candidate within the goal (or its most accurate), compacted
        at the other channel roundings, so the pick takes the rounding the backend runs fastest (measured)."""
        dense_val = self.state["dense"]["val_acc"]
        mined = [o for o in self.options() if o["pattern"] == "channel" and o.get("round_to", ROUNDINGS[0])
                 == ROUNDINGS[0]]
        if not mined or "roundings" in tried:  # once: re-timed beside its variants, the best may change place
            return []
        tried.add("roundings")
        good = [o for o in mined if self.goal.meets(o, dense_val)]
        best = min(good, key=lambda o: o["latency_ms"]) if good else max(mined, key=lambda o: o["val_acc"])
        rec = self.state["candidates"][best["name"]]
        return [Candidate("channel", rec["sparsity"], rec["finetune_lr"], r) for r in ROUNDINGS[1:]]

    def finish(self, untried: list[str]) -> dict:
        options = self.options()
        dense_val = self.state["dense"]["val_acc"]
        n_val = self.val_images()
        for o in options:
            o["val_drop_points"] = round(drop_points(o, dense_val), 3)
            o["val_drop_interval"] = drop_interval(o["val_acc"], dense_val, n_val)
        chosen = pick(options, dense_val, self.goal)
        best = chosen["option"]
        test = {"dense_test_acc": self.state["dense"]["test_acc_by_backend"].get(best["backend"])}
        if best["name"] == "dense":
            test["pick_test_acc"] = test["dense_test_acc"]
        else:
            measured = self.state["candidates"][best["name"]]["backends"][best["backend"]]
            test["pick_test_acc"], test["test_delta"] = measured["test_acc"], measured.get("test_delta")
        front = pareto_front(options)
        pick_record = {**best, **test, "meets_goal": chosen["meets_goal"], "why": chosen["why"],
                       "path": self.state["candidates"].get(best["name"], {}).get("path", self.state["dense"]["path"]),
                       "speedless_layers": self.state["candidates"].get(best["name"], {}).get("speedless_layers", [])}
        pick_record["resolution"] = resolution_note(pick_record, dense_val, n_val, self.goal.max_drop)
        result = {"goal": self.goal.describe(), "pick": pick_record, "val_images": n_val,
                  "pareto_front": [{"name": o["name"], "backend": o["backend"]} for o in front],
                  "options": options, "untried": untried, "warnings": self.warnings(),
                  "stopped": "budget" if untried else "search complete"}
        self.state["result"] = result
        self.save()
        plot(options, front, best, self.out / TUNE_PLOT)
        return self.state



    def warnings(self) -> list[str]:
        """What a user should know about the candidates: channel layers whose pruning bought no speed (per layer,
        the candidates it happened in)."""
        seen: dict[str, list[str]] = {}
        for name, rec in self.state["candidates"].items():
            for layer in rec.get("speedless_layers", []):
                key = (f"layer {layer['layer']} ({layer['type']}, {layer['shape'][0]}->{layer['shape'][1]})")
                seen.setdefault(key, []).append(f"{name} ({layer['pruned']:.0%} pruned)")
        return [f"{key}: its pruned channels could not be removed (tied to a layer that keeps them, or kept by the "
                f"channel rounding), so their accuracy cost buys no speed, in {', '.join(names)}"
                for key, names in seen.items()]


def drop_interval(acc: float, dense_val: float, n: int | None) -> list[float] | None:
    """The validation drop (points, dense minus this) with its 95% interval, from accuracies on ``n`` images each.
    Unpaired: only the two accuracies are kept, not which images each got right, so the interval is wider than
    a paired one (conservative)."""
    from gemdeploy.stats import unpaired_difference

    if not n:
        return None
    d = unpaired_difference(dense_val * n, n, acc * n, n)
    return [round(100 * d.low, 3), round(100 * d.high, 3)]


def resolution_note(pick_record: dict, dense_val: float, n_val: int | None, max_drop: float) -> str | None:
    """When the validation split cannot tell the pick's drop from ``max_drop`` points (the interval holds values on
    both sides of it), say so and how many validation images could; the test difference's own verdict beside it."""
    from gemdeploy.stats import images_to_decide_unpaired

    parts = []
    interval = pick_record.get("val_drop_interval")
    if interval and interval[0] <= max_drop < interval[1]:
        need = images_to_decide_unpaired(pick_record["val_acc"], dense_val, threshold=-max_drop / 100)
        parts.append(f"the validation split ({n_val} images) cannot tell whether the pick's drop exceeds "
                     f"{max_drop:g} point(s): its 95% interval is {interval[0]:+.2f} to {interval[1]:+.2f} points" +
                     (f"; about {need:,} validation images could" if need else "; the drop sits on that line"))
    test = pick_record.get("test_delta")
    if test and test.get("judgement") == "too small to tell":
        need = test.get("images_for_1_point")
        parts.append(f"the test split ({test['n']} images) cannot tell whether it loses more than 1 point either: "
                     f"{100 * test['delta']:+.2f} points, 95% interval {100 * test['low']:+.2f} to "
                     f"{100 * test['high']:+.2f}" + (f"; about {need:,} test images could" if need else ""))
    return "; ".join(parts) or None


def plot(options: list[dict], front: list[dict], best: dict, path: Path) -> None:
    """Validation accuracy against latency, one colour per backend, the Pareto front joined and the pick ringed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for b in sorted({o["backend"] for o in options}):
        pts = [o for o in options if o["backend"] == b]
        ax.scatter([o["latency_ms"] for o in pts], [100 * o["val_acc"] for o in pts], label=b, alpha=0.8)
        for o in pts:
            ax.annotate(o["name"].split("-lr")[0], (o["latency_ms"], 100 * o["val_acc"]), fontsize=6, alpha=0.7)
    ax.plot([o["latency_ms"] for o in front], [100 * o["val_acc"] for o in front], "k--", lw=1, label="Pareto front")
    ax.scatter([best["latency_ms"]], [100 * best["val_acc"]], s=250, facecolors="none", edgecolors="red", lw=2,
               label=f"pick: {best['name']} on {best['backend']}")
    ax.set_xscale("log")
    ax.set_xlabel("latency (ms, median, log scale)")
    ax.set_ylabel("validation accuracy (%)")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    tmp.replace(path)


def tune(opts: TuneOptions, out: str | Path, *, resume: bool = False,
         progress: Callable[[str], None] = lambda s: None) -> dict:
    """Run (or resume) a tune in ``out``; returns tune.json's content."""
    from gemdeploy.bench.measure import choose_backends
    from gemdeploy.bench.config import BenchOptions

    opts = opts.resolve()
    choose_backends(BenchOptions(backend=list(opts.backend)))  # a backend this machine lacks: one line, now
    search_patterns(opts)  # a method that finds nothing worth searching: one line, before any folder is made
    return Tune(opts, Path(out), resume, progress).run()
