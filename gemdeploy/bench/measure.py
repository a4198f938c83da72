"""Collect every (run x backend x precision x batch) measurement: accuracy, latency, size."""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from gemdeploy.run.artifacts import RunArtifacts
from gemdeploy.bench.backends import BACKENDS
from gemdeploy.bench.backends.base import Runner
from gemdeploy.bench.backends.pytorch import pytorch_model
from gemdeploy.bench.config import BenchOptions
from gemdeploy.errors import GemdeployError


@dataclass
class RunInfo:
    name: str
    art: RunArtifacts
    summary: dict


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


def accuracy(runner: Runner, split, batch_size: int) -> float:
    correct = total = 0
    for x, y in split.batches(batch_size):
        pred = runner.predict(x).argmax(1)
        correct += int((pred == y.cpu().numpy()).sum())
        total += len(y)
    return correct / max(1, total)


def real_batch(test_images: torch.Tensor, batch: int) -> torch.Tensor:
    """The first ``batch`` test images (repeated if the split is smaller): real inputs, never zeros."""
    reps = -(-batch // len(test_images))
    return test_images.repeat(reps, 1, 1, 1)[:batch].contiguous()


def size_info(run: RunInfo, path: Path, model_cache: dict) -> dict:
    from gemdeploy.compact.compaction import model_totals

    if run.name not in model_cache:
        model_cache[run.name] = model_totals(pytorch_model(run), run.art.input_shape)
    return {**model_cache[run.name], "file_bytes": path.stat().st_size if path.is_file() else None}


def percentile(times: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(times), q))


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
    if opts.threads:
        torch.set_num_threads(opts.threads)
    threads = torch.get_num_threads()
    backends, skipped = choose_backends(opts)
    data = runs[0].art.data("cpu")
    test_images = data.sample_images(max(opts.batch_sizes), "test").float()
    rows, cache = [], {}
    for run in runs:
        for backend in backends:
            items = backend.artifacts(run, threads)
            if not items:
                if opts.backend:
                    raise GemdeployError(f"{run.art.run.path} has no {backend.needs} for {backend.name}; make it with "
                                         f"`{backend.missing_hint(run)}`")
                skipped.append({"backend": backend.name, "run": run.name,
                                "reason": f"no artifact for it (`{backend.missing_hint(run)}`)"})
            for item in items:
                progress(f"{run.name}: {item.label} on {backend.name}")
                runner = item.make()
                too_big = [b for b in opts.batch_sizes if runner.max_batch is not None and b > runner.max_batch]
                if too_big:
                    raise GemdeployError(f"batch size {too_big[0]} is above the engine's profile (max {runner.max_batch}) "
                                         f"of {item.path}; rebuild with `gemdeploy export ... --trt --max-batch {max(too_big)}`")
                acc_batch = min(256, runner.max_batch or 256)
                acc = accuracy(runner, data.test, acc_batch)
                for batch in opts.batch_sizes:
                    times = runner.time(real_batch(test_images, batch), opts.iters, opts.warmup)
                    med = statistics.median(times)
                    rows.append({
                        "run": run.name, "method": run.summary["method"], "pattern": run.summary.get("pattern"),
                        "sparsity": run.summary["sparsity"], "backend": backend.name, "device": backend.device,
                        "artifact": item.label, "precision": item.precision, "batch": batch, "test_acc": acc,
                        "latency_ms": {"median": med * 1e3, "p90": percentile(times, 90) * 1e3,
                                       "p99": percentile(times, 99) * 1e3,
                                       "std": (statistics.stdev(times) if len(times) > 1 else 0.0) * 1e3,
                                       "min": min(times) * 1e3},
                        "throughput_ips": batch / med, "iters": opts.iters, "warmup": opts.warmup,
                        "cpu_threads": threads if backend.device == "cpu" else None,
                        **size_info(run, item.path, cache),
                    })
    _add_relative(rows, runs)
    return {"runs": [{"name": r.name, "path": str(r.art.run.path), "method": r.summary["method"],
                      "model": r.summary["model"], "data": r.summary["data"], "sparsity": r.summary["sparsity"],
                      "pattern": r.summary.get("pattern"), "mine_test_acc": r.summary["test_acc"]} for r in runs],
            "reference": _reference(runs).name, "rows": rows, "unavailable": skipped,
            "options": {"batch_sizes": opts.batch_sizes, "backends": opts.backend or None, "iters": opts.iters,
                        "warmup": opts.warmup, "threads": threads}}


def _reference(runs: list[RunInfo]) -> RunInfo:
    """The dense run when there is one, else the first run."""
    return next((r for r in runs if r.summary["method"] == "dense"), runs[0])


def _add_relative(rows: list[dict], runs: list[RunInfo]) -> None:
    ref = _reference(runs).name
    index = {(r["run"], r["backend"], r["precision"], r["batch"]): r for r in rows}
    for r in rows:
        base = index.get((ref, r["backend"], r["precision"], r["batch"])) or index.get((ref, r["backend"], "fp32", r["batch"]))
        r["speedup_vs_reference"] = base["latency_ms"]["median"] / r["latency_ms"]["median"] if base else None
        r["acc_delta_vs_reference"] = r["test_acc"] - base["test_acc"] if base else None
