"""Collect every (run x backend x precision x batch) measurement: accuracy, latency, size."""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from gemdeploy.run.artifacts import RunArtifacts
from gemdeploy.bench.backends import BACKENDS
from gemdeploy.bench.backends.base import Runner
from gemdeploy.bench.config import BenchOptions
from gemdeploy.compact.compaction import model_totals
from gemdeploy.compact.deploy import Deployed, deployed_model
from gemdeploy.errors import GemdeployError
from gemdeploy.machine import gpu_info
from gemdeploy.exporters.manifest import ExportManifest
from gemdeploy.run import layout
from gemdeploy.files import load_metadata
from gemdeploy.stats import images_to_decide, judge, paired_difference, wilson_interval


@dataclass
class RunInfo:
    """One run as bench sees it; backends ask it for what they run (never rebuild file names)."""

    name: str
    art: RunArtifacts
    summary: dict
    _deployed: Deployed | None = None
    _exports: ExportManifest | None = None

    def deployed(self) -> Deployed:
        """The model the run deploys (gemdeploy.compact.deploy decides), loaded once."""
        if self._deployed is None:
            self._deployed = deployed_model(self.art)
        return self._deployed

    @property
    def exports(self) -> ExportManifest:
        """The artifacts its export.json lists."""
        if self._exports is None:
            self._exports = ExportManifest.of(self.art.run.path)
        return self._exports


def open_runs(paths: list[Path]) -> list[RunInfo]:
    runs, names = [], set()
    for p in paths:
        art = RunArtifacts.open(p)
        summary = art.summary()  # refuses an unfinished run, with the command that finishes it
        name = Path(p).resolve().name
        while name in names:
            name += "'"
        names.add(name)
        runs.append(RunInfo(name, art, summary))
    first = runs[0]
    for r in runs[1:]:
        if r.art.config.data != first.art.config.data or r.art.input_shape != first.art.input_shape:
            raise GemdeployError(f"cannot compare {first.name} ({first.art.config.data}, input {first.art.input_shape}) "
                                 f"with {r.name} ({r.art.config.data}, input {r.art.input_shape}): "
                                 "bench runs of one data set and input shape together")
    return runs


def correct_per_image(runner: Runner, split, batch_size: int) -> np.ndarray:
    """One bool per test image, in the split's order: the paired outcomes the accuracy intervals need."""
    out = [runner.predict(x).argmax(1) == y.cpu().numpy() for x, y in split.batches(batch_size)]
    return np.concatenate(out).astype(bool) if out else np.zeros(0, dtype=bool)


def real_batch(test_images: torch.Tensor, batch: int) -> torch.Tensor:
    """The first ``batch`` test images (repeated if the split is smaller): real inputs, never zeros."""
    reps = -(-batch // len(test_images))
    return test_images.repeat(reps, 1, 1, 1)[:batch].contiguous()


def size_info(run: RunInfo, path: Path, model_cache: dict) -> dict:
    if run.name not in model_cache:
        model_cache[run.name] = model_totals(run.deployed().model, run.art.input_shape)
    return {**model_cache[run.name], "file_bytes": path.stat().st_size if path.is_file() else None}


NOISY_SPREAD = 0.5  # a latency whose p10-p90 range exceeds half its median is flagged noisy
REMEASURE_FACTOR = 4  # a noisy one is measured again with this many times the calls ...
REMEASURE_BUDGET_S = 10.0  # ... within about this many seconds


def latency_stats(seconds: list[float]) -> dict:
    """Milliseconds: median and the spread around it (p10..p90, p25..p75, p99, min, max, std), and ``spread``,
    the p10-p90 range relative to the median."""
    t = np.asarray(seconds, dtype=np.float64) * 1e3
    q = {k: float(np.percentile(t, k)) for k in (10, 25, 50, 75, 90, 99)}
    med = q[50]
    return {"median": med, "p10": q[10], "p25": q[25], "p75": q[75], "p90": q[90], "p99": q[99],
            "min": float(t.min()), "max": float(t.max()), "std": float(t.std(ddof=1)) if len(t) > 1 else 0.0,
            "spread": (q[90] - q[10]) / med if med > 0 else 0.0, "calls": int(len(t))}


def is_noisy(lat: dict) -> bool:
    return lat["spread"] > NOISY_SPREAD


def timed(runner: Runner, images: torch.Tensor, iters: int, warmup: int) -> dict:
    """Latency of ``runner`` on ``images``; a noisy measurement is repeated once with more calls (the repeat is
    kept, the first attempt recorded) and stays flagged ``noisy`` if it is still noisy."""
    lat = latency_stats(runner.time(images, iters, warmup))
    first = None
    if is_noisy(lat):
        more = max(iters, min(iters * REMEASURE_FACTOR, int(REMEASURE_BUDGET_S * 1e3 / max(lat["median"], 1e-3))))
        first = {k: lat[k] for k in ("median", "p10", "p90", "min", "spread", "calls")}
        lat = latency_stats(runner.time(images, more, warmup))
    return {**lat, "noisy": is_noisy(lat), "remeasured": first is not None, "first_attempt": first}


def load_average() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def resolve_threads(requested: int) -> int:
    return requested if requested > 0 else (os.cpu_count() or 1)


def choose_backends(opts: BenchOptions) -> tuple[list, list[dict]]:
    """(backends to time, [{backend, reason}] for the ones that cannot run here)."""
    chosen, unavailable = [], []
    for name in opts.backend or BACKENDS.names():
        backend = BACKENDS.get(name)()
        why = backend.unavailable()
        if why is not None:
            if opts.backend:
                raise GemdeployError(f"backend {name} is not available here: {why}")
            unavailable.append({"backend": name, "reason": why})
        elif opts.backend or not backend.opt_in:
            chosen.append(backend)
    return chosen, unavailable


def measure(paths: list[Path], opts: BenchOptions, progress: Callable[[str], None] = lambda s: None) -> dict:
    opts = opts.resolve()
    runs = open_runs(paths)
    threads = resolve_threads(opts.threads)
    saved_threads = torch.get_num_threads()
    torch.set_num_threads(threads)  # PyTorch; ONNX Runtime and the sparse runtime get it per session
    try:
        return _measure(runs, opts, threads, progress)
    finally:
        torch.set_num_threads(saved_threads)


def _measure(runs: list[RunInfo], opts: BenchOptions, threads: int, progress: Callable[[str], None]) -> dict:
    backends, skipped = choose_backends(opts)
    data = runs[0].art.data("cpu")
    test_images = data.sample_images(max(opts.batch_sizes), "test").float()
    rows, cache, gaps = [], {}, []
    load_before, started = load_average(), time.time()
    for run in runs:
        for backend in backends:
            items = backend.artifacts(run, threads)
            if not items:  # a gap: the other (run, backend) pairs are still measured
                skipped.append({"backend": backend.name, "run": run.name, "needs": backend.needs,
                                "make": backend.missing_hint(run),
                                "reason": f"no {backend.needs} (`{backend.missing_hint(run)}`)"})
                gaps.append(f"{run.art.run.path} has no {backend.needs} for {backend.name}; make it with "
                            f"`{backend.missing_hint(run)}`")
            for item in items:
                progress(f"{run.name}: {item.label} on {backend.name}")
                runner = item.make()
                too_big = [b for b in opts.batch_sizes if runner.max_batch is not None and b > runner.max_batch]
                if too_big:
                    raise GemdeployError(f"batch size {too_big[0]} is above the engine's profile (max {runner.max_batch}) "
                                         f"of {item.path}; rebuild with `gemdeploy export ... --trt --max-batch {max(too_big)}`")
                acc_batch = min(256, runner.max_batch or 256)
                outcomes = correct_per_image(runner, data.test, acc_batch)
                acc = float(outcomes.mean()) if outcomes.size else 0.0
                acc_ci = list(wilson_interval(int(outcomes.sum()), len(outcomes)))
                for batch in opts.batch_sizes:
                    lat = timed(runner, real_batch(test_images, batch), opts.iters, opts.warmup)
                    rows.append({
                        "run": run.name, "method": run.summary["method"], "pattern": run.summary.get("pattern"),
                        "sparsity": run.summary["sparsity"], "backend": backend.name, "device": backend.device,
                        "artifact": item.label, "source": item.source, "precision": item.precision, "batch": batch, "test_acc": acc,
                        "test_acc_ci": acc_ci, "test_images": int(len(outcomes)), "_correct": outcomes,
                        "latency_ms": lat, "throughput_ips": batch / (lat["median"] / 1e3),
                        "iters": opts.iters, "warmup": opts.warmup,
                        "cpu_threads": threads if backend.device == "cpu" else None,
                        "fp32_baseline_backend": backend.fp32_baseline,
                        **size_info(run, item.path, cache), **runner.notes(batch),
                    })
    if not rows and gaps:
        raise GemdeployError(gaps[0])  # nothing at all to measure: say what would make the first pair measurable
    ref = _reference(runs)
    add_relative(rows, ref.name)
    for r in rows:
        del r["_correct"]  # per-image outcomes: used for the paired intervals, not written out
    return {"runs": [{"name": r.name, "path": str(r.art.run.path), "method": r.summary["method"],
                      "model": r.summary["model"], "data": r.summary["data"], "sparsity": r.summary["sparsity"],
                      "density": r.summary.get("density", 1.0 - r.summary["sparsity"]),
                      "pattern": r.summary.get("pattern"), "mine_test_acc": r.summary["test_acc"],
                      "imp_levels": imp_levels(r)} for r in runs],
            "reference": ref.name, "reference_is_dense": ref.summary["method"] == "dense",
            "rows": rows, "unavailable": skipped,
            "gpu": gpu_info() if any(b.device == "cuda" for b in backends) else None,
            "options": {"batch_sizes": opts.batch_sizes, "backends": opts.backend or None, "iters": opts.iters,
                        "warmup": opts.warmup, "threads": threads, "threads_requested": opts.threads,
                        "noisy_spread": NOISY_SPREAD, "remeasure_factor": REMEASURE_FACTOR},
            "conditions": {"load_average_before": load_before, "load_average_after": load_average(),
                           "seconds": round(time.time() - started, 1)}}


def imp_levels(run: RunInfo) -> list[dict]:
    """Every IMP level a run saved (density, validation accuracy): the level files' metadata, else the ``imp``
    records of metrics.jsonl; empty for other methods."""
    levels = {}
    folder = run.art.run / layout.IMP_LEVELS
    if Path(folder).is_dir():
        for f in sorted(Path(folder).glob("level-*.safetensors")):
            try:
                rec = json.loads(load_metadata(f).get("record", "null"))
            except (GemdeployError, ValueError):
                continue
            if isinstance(rec, dict) and "density" in rec:
                levels[rec.get("level", f.stem)] = rec
    metrics = Path(run.art.run / layout.METRICS)
    if not levels and metrics.is_file():
        for line in metrics.read_text().splitlines():
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if isinstance(rec, dict) and rec.get("phase") == "imp" and "density" in rec:
                levels[rec.get("level", len(levels))] = rec
    return [{"level": r.get("level"), "density": float(r["density"]), "val_acc": r.get("val_acc")}
            for _, r in sorted(levels.items(), key=lambda kv: float(kv[1]["density"]), reverse=True)]


def _reference(runs: list[RunInfo]) -> RunInfo:
    """The dense run when there is one, else the first run."""
    return next((r for r in runs if r.summary["method"] == "dense"), runs[0])


# Where a backend has no fp32 artifact of the reference run (the sparse runtime), its rows are compared with the
# reference's fp32 on the backend it names (``fp32_baseline``: fp16 CUDA graphs against fp32 eager PyTorch), else on
# this backend of the same device.
FP32_BASELINE_BACKEND = {"cpu": "onnxruntime-cpu", "cuda": "onnxruntime-cuda"}


def _label(run: str, row: dict) -> str:
    return f"{run} {row['precision']} on {row['backend']}"


def add_relative(rows: list[dict], ref: str) -> None:
    """Speed-up and accuracy delta of every row against the reference run's fp32 on the same backend and batch
    (``*_vs_dense_fp32``; the baseline is named in ``baseline``), and against the reference's same precision
    on the same backend (``*_vs_dense_same_precision``)."""
    index = {(r["run"], r["backend"], r["precision"], r["batch"]): r for r in rows}
    for r in rows:
        base = index.get((ref, r["backend"], "fp32", r["batch"]))
        fallback = r.get("fp32_baseline_backend") or FP32_BASELINE_BACKEND.get(r["device"])
        if base is None and fallback:
            base = index.get((ref, fallback, "fp32", r["batch"]))
        same = index.get((ref, r["backend"], r["precision"], r["batch"]))
        r["baseline"] = _label(ref, base) if base else None
        r["speedup_vs_dense_fp32"] = base["latency_ms"]["median"] / r["latency_ms"]["median"] if base else None
        r["acc_delta_vs_dense_fp32"] = r["test_acc"] - base["test_acc"] if base else None
        r["baseline_same_precision"] = _label(ref, same) if same else None
        r["speedup_vs_dense_same_precision"] = same["latency_ms"]["median"] / r["latency_ms"]["median"] if same else None
        r["acc_delta_vs_dense_same_precision"] = r["test_acc"] - same["test_acc"] if same else None
        r["acc_delta_vs_dense_fp32_ci"] = _delta_interval(r, base)
        r["acc_delta_vs_dense_same_precision_ci"] = _delta_interval(r, same)
        r["baseline_noisy"] = bool(base and base["latency_ms"].get("noisy"))
        r["baseline_same_precision_noisy"] = bool(same and same["latency_ms"].get("noisy"))


def _delta_interval(row: dict, base: dict | None) -> dict | None:
    """The accuracy difference row - base with its paired 95% interval (both scored the same test images), and,
    when the interval cannot tell a 1-point difference, how many test images could."""
    if base is None or "_correct" not in row or "_correct" not in base or len(row["_correct"]) != len(base["_correct"]):
        return None
    diff = paired_difference(row["_correct"], base["_correct"])
    verdict = judge(diff)
    out = {**diff.as_dict(), "judgement": verdict}
    if verdict == "too small to tell":
        # how many test images would put the interval wholly above or below a 1-point loss (None: it sits on it)
        out["images_for_1_point"] = images_to_decide(row["_correct"], base["_correct"])
    return out
