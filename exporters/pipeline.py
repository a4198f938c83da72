"""`gemdeploy export`: a run directory -> verified ONNX per precision (gemdeploy.exporters.precisions), sparse
storage, TensorRT engines. Names in gemdeploy.exporters.layout.

Every file is built in a staging folder inside RUN/export/ and moved into place only once it has passed its
check; its sidecar (written right after it) records the sha256 of the weights it came from. So a re-run:
  * keeps each requested precision whose file is current (same source sha256) and adds the missing ones;
  * refuses to replace a file made from other weights unless --overwrite;
  * silently redoes a file whose sidecar is missing (an export killed between the two renames), and sweeps the
    staging folders of an interrupted export.
export.json is rebuilt from the sidecars of everything in place, so it never disagrees with them.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Callable

import onnx
import torch

from gemdeploy.compact.deploy import deployed_model
from gemdeploy.errors import GemdeployError
from gemdeploy.exporters import layout
from gemdeploy.exporters import onnx_export as ox
from gemdeploy.exporters.config import ExportOptions
from gemdeploy.exporters.precisions import PRECISIONS
from gemdeploy.exporters.precisions.base import ExportJob
from gemdeploy.exporters.tensorrt_build import cuda_status
from gemdeploy.exporters.precisions.int8 import verdict_of
from gemdeploy.exporters.tensorrt_build import build_engine, require_tensorrt
from gemdeploy.run.artifacts import RunArtifacts
from gemdeploy.sparsity import PATTERNS
from gemdeploy.run.rundir import check_output_dir, sweep_debris
from gemdeploy.files import file_sha256, read_json, user_permissions, write_json
from gemdeploy.models import fp32_bytes

SIDE_SCHEMA = {"file": str, "sha256": str, "source_sha256": str}


def _default_timing_cache() -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "gemdeploy" / "tensorrt-timing.cache"


def require_onnxruntime() -> None:
    try:
        import onnxruntime  # noqa: F401
    except Exception as exc:  # noqa: BLE001 - ImportError, or a broken mix of onnxruntime and onnxruntime-gpu
        raise GemdeployError(f"gemdeploy export verifies with ONNX Runtime, which does not import ({exc}); install "
                             "one of `pip install gemdeploy[cpu]` or, on GPU hosts, `pip install gemdeploy[gpu]`") from None


def sparse24_benefit(model: torch.nn.Module, art: RunArtifacts) -> dict:
    """Which layers of the exported model 2:4 sparse GPU kernels could ever speed up (their shapes and, for a 2:4
    run, whether their weights hold the pattern), said before the export starts and kept in export.json."""
    from gemdeploy.sparsity.kernels24 import holds_per_layer, model_benefit

    if PATTERNS.get(art.config.pattern).groups(art.config.nm) is not None:  # an N:M run: say whether it holds
        return model_benefit(model, art.input_shape, holds_per_layer(model))
    found = model_benefit(model, art.input_shape)
    found["line"] += "; this run's weights are not 2:4 (`gemdeploy compact RUN --pattern 2:4 --out NEW` projects them)"
    return found


def _sidecar_of(out_dir: Path, name: str) -> dict | None:
    """The sidecar of an artifact in place, or None when the artifact or its sidecar is missing or unreadable."""
    if not (out_dir / name).is_file() or not (out_dir / layout.sidecar(name)).is_file():
        return None
    try:
        side = read_json(out_dir / layout.sidecar(name))
    except GemdeployError:
        return None
    return side if isinstance(side, dict) and all(isinstance(side.get(k), t) for k, t in SIDE_SCHEMA.items()) else None


def plan(out_dir: Path, opts: ExportOptions, source_sha: str, log: Callable[[str], None]) -> list[str]:
    """The precisions to (re)export now."""
    todo, stale = [], []
    for p in opts.precision:
        name = PRECISIONS.get(p).file
        side = _sidecar_of(out_dir, name)
        if opts.overwrite or not (out_dir / name).exists():
            todo.append(p)
        elif side is None:
            log(f"{name} has no valid sidecar (an interrupted export): redoing it")
            todo.append(p)
        elif side["source_sha256"] != source_sha:
            stale.append(name)
        elif p.startswith("int8") and "verdict" not in side:
            log(f"{name} predates the INT8 check of both its Q/DQ numerics and ONNX Runtime CPU: redoing it")
            todo.append(p)
        else:
            log(f"{name} is current (same source weights): kept")
    if stale:
        raise GemdeployError(f"{out_dir} holds {', '.join(stale)} exported from other weights; pass --overwrite to "
                             "replace them")
    if todo and "fp32" not in todo and _sidecar_of(out_dir, PRECISIONS.get("fp32").file) is None:
        todo.insert(0, "fp32")
    return todo


def export_run(run_path: str | Path, opts: ExportOptions, log: Callable[[str], None] = lambda s: None) -> dict:
    opts = opts.resolve()
    require_onnxruntime()
    art = RunArtifacts.open(run_path)
    out_dir = check_output_dir(art.run.path / layout.EXPORT_DIR, "export folder")
    if opts.trt:
        _check_gpu_precisions(opts)
    deployed = deployed_model(art)
    model, source, masked, note = deployed.model, deployed.source, deployed.masked, deployed.note
    ox.require_one_file(model, f"the {source} model", "mine or compact it smaller (--pattern channel, a higher "
                        "--sparsity) or export a smaller architecture")
    source_sha = file_sha256(deployed.weights)
    if out_dir.is_dir():
        for gone in sweep_debris(out_dir):
            log(f"removed {gone} (left by an interrupted export)")
    todo = plan(out_dir, opts, source_sha, log)
    if note:
        log(note)
    kernels24 = sparse24_benefit(model, art)
    log(kernels24["line"])

    started = time.perf_counter()
    data = art.data("cpu")
    images = data.sample_images(opts.verify_samples, "test").float().cpu()
    created = not out_dir.exists()
    out_dir.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(dir=out_dir, prefix=layout.STAGING_PREFIX))
    job = ExportJob(art, model, source, source_sha, opts, stage, out_dir, data, images, ox.torch_logits(model, images),
                    log)
    try:
        if todo and todo[0] != "fp32":  # the others build on the verified fp32 file already in place
            job.fp32_path = out_dir / PRECISIONS.get("fp32").file
            job.fp32_proto = onnx.load(str(job.fp32_path))
            fp32_side = _sidecar_of(out_dir, job.fp32_path.name) or {}
            job.fp32_acc, job.exporter = fp32_side.get("test_acc"), fp32_side.get("exporter")
        sidecars = {p: PRECISIONS.get(p)().export(job) for p in todo}
        for side in sidecars.values():  # the others are refused unless verified: their verdict is that check
            side.setdefault("verdict", {"ok": bool(side["verification"]["ok"]), "cause": None,
                                        "message": f"{side['file']}: verified ({_what_was_checked(side)})"})
        extra_files = _sizes_and_sparse_storage(job, masked, "fp32" in todo)
        if "fp32" in sidecars:
            sidecars["fp32"]["sizes"] = job.notes["fp32_sizes"]
        _commit(stage, out_dir, {PRECISIONS.get(p).file: side for p, side in sidecars.items()} | extra_files)
    except BaseException:
        if created and out_dir.is_dir() and not any(p for p in out_dir.iterdir() if p != stage):
            shutil.rmtree(out_dir, ignore_errors=True)  # a refused export leaves no empty folder behind
        raise
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    record = _record(art, out_dir, opts, source, note, job, todo, time.perf_counter() - started)
    record["sparse24_kernels"] = kernels24
    if opts.trt:
        record["tensorrt"] = _build_engines(art, out_dir, opts, record, log)
    write_json(out_dir / layout.RECORD, record)
    return record


def _what_was_checked(side: dict) -> str:
    check = side.get("verification") or {}
    if side.get("precision") == "fp16":
        return f"top-1 agreement with PyTorch {check.get('top1_agreement', 0):.2%}"
    return f"max |diff| to PyTorch {check.get('max_abs_diff', float('nan')):.2g} <= {check.get('tolerance', float('nan')):.2g}"


def _check_gpu_precisions(opts: ExportOptions) -> None:
    """Fail fast on impossible combinations; a missing TensorRT is reported after the ONNX is written."""
    cuda = cuda_status()
    cap = float(cuda.get("capability") or 0)
    if cuda["available"] and "int8" in opts.precision and cap < 6.1:
        raise GemdeployError(f"--precision int8 needs a GPU with INT8 support (compute capability >= 6.1); "
                             f"{cuda['gpu']} has {cuda['capability']}")
    if cuda["available"] and "fp16" in opts.precision and cap < 5.3:
        raise GemdeployError(f"--precision fp16 needs compute capability >= 5.3; {cuda['gpu']} has {cuda['capability']}")


def _sizes_and_sparse_storage(job: ExportJob, masked: torch.nn.Module, fp32_new: bool) -> dict[str, dict]:
    """With a new fp32 file: the dense-vs-compacted byte counts (kept in its sidecar) and model.sparse.onnx."""
    if not fp32_new:
        return {}
    file_bytes = job.fp32_path.stat().st_size
    dense_weights = fp32_bytes(masked.state_dict().values()) if job.source == "compacted" else None
    if dense_weights is not None and dense_weights > ox.ONE_FILE_WEIGHT_BYTES:
        # the uncompacted model is over one ONNX file's limit: its size is said from its weights, not a file
        job.notes["fp32_sizes"] = {"dense_bytes": dense_weights, "compacted_bytes": file_bytes,
                                   "dense_bytes_from": "fp32 weights (over one ONNX file's 2 GB limit)"}
    elif dense_weights is not None:
        dense_proto, _ = ox.torch_to_onnx(masked, job.verify_images, exporter=job.opts.exporter)
        dense_proto, _ = ox.simplify(dense_proto)
        job.notes["fp32_sizes"] = {"dense_bytes": len(dense_proto.SerializeToString()), "compacted_bytes": file_bytes}
    else:
        job.notes["fp32_sizes"] = {"dense_bytes": file_bytes, "compacted_bytes": None}
    out: dict[str, dict] = {}
    if not job.opts.sparse_storage:
        return out
    sparse_proto, names = ox.to_sparse_storage(job.fp32_proto)
    if not names:
        job.notes["sparse_storage_note"] = ("no weight is smaller in COO storage (needs under 1/3 density): "
                                            "model.sparse.onnx would equal model.fp32.onnx, not written")
        job.notes["drop_sparse_storage"] = True
        return out
    path = job.stage / layout.SPARSE_STORAGE
    check = ox.write_verified(sparse_proto, path, lambda p: ox.verify(p, job.model, job.verify_images, "fp32",
                                                                      job.reference), "the sparse-storage ONNX")
    out[layout.SPARSE_STORAGE] = job.sidecar(
        path, sparse_proto, precision="fp32", storage="Constant sparse_value (COO, int64 indices)", sparse_tensors=names,
        verification=check, test_acc=job.fp32_acc,
        note="ONNX Runtime densifies the sparse weights at load time; TensorRT's parser does not read them, so "
             "engines are built from model.fp32.onnx")
    return out


def _commit(stage: Path, out_dir: Path, sidecars: dict[str, dict]) -> None:
    """Move every verified file into place, each followed by its sidecar (fp32 last: the others refer to it)."""
    for name in sorted(sidecars, key=lambda n: n == PRECISIONS.get("fp32").file):
        side = sidecars[name]
        user_permissions(stage / name)
        (out_dir / layout.sidecar(name)).unlink(missing_ok=True)  # no stale sidecar next to the new file
        os.replace(stage / name, out_dir / name)
        write_json(out_dir / layout.sidecar(name), side)


def _record(art: RunArtifacts, out_dir: Path, opts: ExportOptions, source: str, note: str | None, job: ExportJob,
            todo: list[str], seconds: float) -> dict:
    """export.json from the sidecars of everything in place."""
    if job.notes.get("drop_sparse_storage"):
        for stale in (layout.SPARSE_STORAGE, layout.sidecar(layout.SPARSE_STORAGE)):
            (out_dir / stale).unlink(missing_ok=True)
    artifacts, accuracy, present, verdicts = {}, {}, {}, {}
    for p in PRECISIONS.names():
        name = PRECISIONS.get(p).file
        side = _sidecar_of(out_dir, name)
        if side is not None and side["source_sha256"] == job.source_sha256:
            if side.get("precision", p).startswith("int8"):
                verdict = verdict_of(side, opts.max_int8_drop)
                if verdict != side.get("verdict"):  # judged under another --max-int8-drop: the sidecar follows
                    side = {**side, "verdict": verdict, "drop_points": verdict["drop_points"],
                            "max_drop_points": opts.max_int8_drop,
                            "verification": {**(side.get("verification") or {}), "ok": verdict["ok"]}}
                    write_json(out_dir / layout.sidecar(name), side)
            artifacts[p], accuracy[p], present[p] = side["file"], side.get("test_acc"), side
            verdicts[p] = side.get("verdict") or {"ok": bool((side.get("verification") or {}).get("ok")),
                                                  "cause": None, "message": None}
    sparse_side = _sidecar_of(out_dir, layout.SPARSE_STORAGE)
    if sparse_side is not None and sparse_side["source_sha256"] == job.source_sha256:
        artifacts["sparse"] = sparse_side["file"]
    fp32 = present.get("fp32", {})
    previous = read_json(out_dir / layout.RECORD) if (out_dir / layout.RECORD).is_file() else {}
    previous = previous if isinstance(previous, dict) else {}
    sizes = fp32.get("sizes") or previous.get("sizes") or {}
    sizes = {"dense_bytes": sizes.get("dense_bytes"), "compacted_bytes": sizes.get("compacted_bytes"),
             "sparse_storage_bytes": sparse_side["bytes"] if sparse_side and "sparse" in artifacts
             else (fp32.get("bytes") if job.notes.get("sparse_storage_note") else None),
             "int8_bytes": present.get("int8", {}).get("bytes"),
             "int8_cpu_bytes": present.get("int8-cpu", {}).get("bytes")}
    if job.notes.get("sparse_storage_note"):
        sizes["sparse_storage_note"] = job.notes["sparse_storage_note"]
    int8 = present.get("int8", {})
    return {
        "run": str(art.run.path), "model": art.config.model, "data": art.config.data, "pattern": art.config.pattern,
        "source": source, "source_note": note, "source_sha256": job.source_sha256, "precisions": list(artifacts),
        "exported_now": todo, "verify_samples": int(len(job.verify_images)), "artifacts": artifacts,
        "accuracy": accuracy, "verdicts": verdicts,
        "qdq_accuracy": {p: side.get("qdq_test_acc") for p, side in present.items() if "qdq_test_acc" in side},
        "sizes": sizes, "exporter": fp32.get("exporter"),
        "sparsity_24": fp32.get("sparsity_24", {}) | {"tensors": fp32.get("sparsity_24_tensors")},
        "int8_drop_points": int8.get("drop_points"),
        "int8_drop_ok": verdicts["int8"]["ok"] if "int8" in verdicts else None,
        "int8_ok": all(verdicts[p]["ok"] for p in verdicts if p.startswith("int8")),
        "max_int8_drop": opts.max_int8_drop, "export_seconds": round(seconds, 2), "tensorrt": None,
    }


def _build_engines(art: RunArtifacts, out_dir: Path, opts: ExportOptions, record: dict,
                   log: Callable[[str], None]) -> dict:
    try:
        require_tensorrt()
    except GemdeployError:
        record["tensorrt"] = {"built": False}
        write_json(out_dir / layout.RECORD, record)
        raise
    sparse = PATTERNS.get(art.config.pattern).tensorrt_sparse_weights(record["sparsity_24"].get("tensors") or {})
    cache = Path(opts.timing_cache) if opts.timing_cache else _default_timing_cache()
    engines = {}
    for p in opts.precision:
        if not PRECISIONS.get(p).engine:
            continue  # sparse-cpu, int8-cpu: files for CPU runtimes, not for TensorRT
        side = build_engine(out_dir / PRECISIONS.get(p).file, out_dir / layout.engine_file(p),
                            input_shape=art.input_shape, precision=p, sparse=sparse, min_batch=opts.min_batch,
                            opt_batch=opts.opt_batch, max_batch=opts.max_batch, workspace_mib=opts.workspace_mib,
                            timing_cache=cache)
        engines[p] = layout.engine_file(p)
        log(f"TensorRT {p} engine: {len(side['sparse_layers'])} layers with sparse tactics")
    return {"built": True, "engines": engines}


__all__ = ["ExportOptions", "export_run", "plan"]
