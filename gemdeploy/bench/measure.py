"""Collect every (run x backend x precision x batch) measurement: accuracy, latency, size."""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from gemdeploy.artifacts import RunArtifacts
from gemdeploy.bench.backends import (Backend, OrtRunner, Runner, TensorRTRunner, TorchRunner, discover,
                                      percentile)
from gemdeploy.errors import GemdeployError
from gemdeploy.rundir import read_json

EXPORT_DIR = "export"
PRECISIONS = ("fp32", "fp16", "int8")


@dataclass
class BenchOptions:
    batch_sizes: list[int] = field(default_factory=lambda: [1, 64])
    iters: int = 50
    warmup: int = 10
    threads: int = 0  # 0: torch's default
    compile: bool = False
    backends: list[str] | None = None  # None: every available backend


@dataclass
class RunInfo:
    name: str
    art: RunArtifacts
    summary: dict


def open_runs(paths: list[Path]) -> list[RunInfo]:
    runs, names = [], set()
    for p in paths:
        art = RunArtifacts.open(p)
        if not art.run.has("summary.json"):
            raise GemdeployError(f"{p} has no summary.json: the run is unfinished (`gemdeploy mine --out {p} --resume`)")
        name = Path(p).resolve().name
        while name in names:
            name += "'"
        names.add(name)
        runs.append(RunInfo(name, art, art.summary()))
    first = runs[0]
    for r in runs[1:]:
        if r.art.config.data != first.art.config.data or r.art.input_shape != first.art.input_shape:
            raise GemdeployError(f"cannot compare {first.name} ({first.art.config.data}, input {first.art.input_shape}) "
                                 f"with {r.name} ({r.art.config.data}, input {r.art.input_shape}): "
                                 "bench runs of one data set and input shape together")
    return runs


def _pytorch_source(run: RunInfo) -> tuple[str, Path]:
    """Which PyTorch model a run offers: the compacted one when it has been compacted."""
    if run.art.run.has("compact.json"):
        return "compacted", run.art.run / "compact.safetensors"
    return "masked", run.art.run / "weights.safetensors"


def _pytorch_model(run: RunInfo) -> torch.nn.Module:
    if _pytorch_source(run)[0] == "compacted":
        from gemdeploy.compaction import load_compacted_model

        return load_compacted_model(run.art)
    return run.art.finetuned_model()


def artifacts_for(run: RunInfo, backend: Backend, explicit: bool, threads: int) -> list[tuple[str, str, Callable[[], Runner], Path]]:
    """(precision, artifact label, runner factory, file) for what ``run`` has for ``backend``.

    With an explicitly chosen backend a missing artifact is an error that names the command making it;
    in automatic mode the backend is just skipped for that run.
    """
    export = run.art.run / EXPORT_DIR
    if backend.kind == "pytorch":
        label, path = _pytorch_source(run)
        return [("fp32", f"torch {label}", lambda: TorchRunner(_pytorch_model(run), backend), path)]
    if backend.kind == "onnxruntime":
        found = [(p, f"onnx {p}", (lambda f=export / f"model.{p}.onnx": OrtRunner(f, backend, threads)), export / f"model.{p}.onnx")
                 for p in PRECISIONS if (export / f"model.{p}.onnx").is_file()]
        if not found and explicit:
            raise GemdeployError(f"{run.art.run.path} has no ONNX export for {backend.name}; "
                                 f"make it with `gemdeploy export {run.art.run.path}`")
        return found
    found = []
    for p in PRECISIONS:
        plan = export / f"engine.{p}.plan"
        if plan.is_file():
            sidecar = read_json(plan.with_suffix(".json"))
            found.append((p, f"tensorrt {p}", (lambda f=plan, s=sidecar: TensorRTRunner(f, s)), plan))
    if not found and explicit:
        raise GemdeployError(f"{run.art.run.path} has no TensorRT engine; make one with "
                             f"`gemdeploy export {run.art.run.path} --trt` on the GPU machine")
    return found


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
    from gemdeploy.compaction import model_totals

    if run.name not in model_cache:
        model_cache[run.name] = model_totals(_pytorch_model(run), run.art.input_shape)
    return {**model_cache[run.name], "file_bytes": path.stat().st_size if path.is_file() else None}


def measure(paths: list[Path], opts: BenchOptions, progress: Callable[[str], None] = lambda s: None) -> dict:
    runs = open_runs(paths)
    if opts.threads:
        torch.set_num_threads(opts.threads)
    threads = torch.get_num_threads()
    available, unavailable = discover(opts.compile)
    if opts.backends:
        names = {b.name for b in available} | {u.backend for u in unavailable}
        for want in opts.backends:
            if want not in {b.name for b in available}:
                reason = next((u.reason for u in unavailable if u.backend == want), None)
                if reason is None and want not in names:
                    raise GemdeployError(f"unknown backend {want!r}; choose from: {', '.join(sorted(names))}")
                raise GemdeployError(f"backend {want} is not available here: {reason}")
        available = [b for b in available if b.name in opts.backends]
    data = runs[0].art.data("cpu")
    test_images = data.sample_images(max(opts.batch_sizes), "test").float()
    rows, skipped, cache = [], [u.__dict__ for u in unavailable], {}
    for run in runs:
        for backend in available:
            items = artifacts_for(run, backend, explicit=bool(opts.backends), threads=threads)
            if not items:
                skipped.append({"backend": backend.name, "run": run.name,
                                "reason": f"no artifact for it (`gemdeploy export {run.art.run.path}"
                                          f"{' --trt' if backend.kind == 'tensorrt' else ''}`)"})
            for precision, label, make, path in items:
                progress(f"{run.name}: {label} on {backend.name}")
                runner = make()
                too_big = [b for b in opts.batch_sizes if runner.max_batch is not None and b > runner.max_batch]
                if too_big:
                    raise GemdeployError(f"batch size {too_big[0]} is above the engine's profile (max {runner.max_batch}) "
                                         f"of {path}; rebuild with `gemdeploy export ... --trt --max-batch {max(too_big)}`")
                acc_batch = min(256, runner.max_batch or 256)
                acc = accuracy(runner, data.test, acc_batch)
                for batch in opts.batch_sizes:
                    times = runner.time(real_batch(test_images, batch), opts.iters, opts.warmup)
                    med = statistics.median(times)
                    rows.append({
                        "run": run.name, "method": run.summary["method"], "pattern": run.summary.get("pattern"),
                        "sparsity": run.summary["sparsity"], "backend": backend.name, "device": backend.device,
                        "artifact": label, "precision": precision, "batch": batch, "test_acc": acc,
                        "latency_ms": {"median": med * 1e3, "p90": percentile(times, 90) * 1e3,
                                       "p99": percentile(times, 99) * 1e3,
                                       "std": (statistics.stdev(times) if len(times) > 1 else 0.0) * 1e3,
                                       "min": min(times) * 1e3},
                        "throughput_ips": batch / med, "iters": opts.iters, "warmup": opts.warmup,
                        "cpu_threads": threads if backend.device == "cpu" else None,
                        **size_info(run, path, cache),
                    })
    _add_relative(rows, runs)
    return {"runs": [{"name": r.name, "path": str(r.art.run.path), "method": r.summary["method"],
                      "model": r.summary["model"], "data": r.summary["data"], "sparsity": r.summary["sparsity"],
                      "pattern": r.summary.get("pattern"), "mine_test_acc": r.summary["test_acc"]} for r in runs],
            "reference": _reference(runs).name, "rows": rows, "unavailable": skipped,
            "options": {**opts.__dict__, "threads": threads}}


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
