"""`gemdeploy export`: a run directory -> verified ONNX (fp32/fp16/INT8 Q/DQ, sparse storage) and engines.

Everything is built in a staging folder inside RUN/export/ and moved into place only once every file
has passed its check, so a failed export leaves what was there before and nothing half-written.
Layout of RUN/export/:
    model.fp32.onnx  model.fp16.onnx  model.int8.onnx   verified ONNX, each with a .json sidecar
    model.sparse.onnx                                   fp32 with sparse_initializer storage (ORT only)
    engine.<precision>.plan + .json                     TensorRT engines (--trt)
    calib-cache/<sha>-<method>-<samples>.json           INT8 activation ranges (reused)
    export.json                                         the record: source, accuracies, sizes, files
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import onnx
import torch

from gemdeploy.artifacts import RunArtifacts
from gemdeploy.errors import GemdeployError, unknown_choice
from gemdeploy.exporters import onnx_export as ox
from gemdeploy.exporters.sparsity import onnx_24_report, torch_24_layers
from gemdeploy.rundir import write_json

PRECISIONS = ("fp32", "fp16", "int8")
EXPORT_DIR = "export"


@dataclass
class ExportOptions:
    precisions: list[str] = field(default_factory=lambda: ["fp32"])
    trt: bool = False
    calib_samples: int = 512
    calib_method: str = "entropy"
    max_int8_drop: float = 1.0  # accuracy points
    verify_samples: int = 512
    exporter: str = "auto"
    overwrite: bool = False
    sparse_storage: bool = True
    min_batch: int = 1
    opt_batch: int = 32
    max_batch: int = 256
    workspace_mib: int = 2048
    timing_cache: str | None = None


def _default_timing_cache() -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "gemdeploy" / "tensorrt-timing.cache"


def planned_files(opts: ExportOptions) -> list[str]:
    names = ["export.json"]
    for p in opts.precisions:
        names += [f"model.{p}.onnx", f"model.{p}.json"]
        if opts.trt:
            names += [f"engine.{p}.plan", f"engine.{p}.json"]
    if opts.sparse_storage:
        names += ["model.sparse.onnx", "model.sparse.json"]
    return names


def validate(opts: ExportOptions) -> None:
    try:
        import onnxruntime  # noqa: F401
    except Exception as exc:  # noqa: BLE001 - ImportError, or a broken mix of onnxruntime and onnxruntime-gpu
        raise GemdeployError(f"gemdeploy export verifies with ONNX Runtime, which does not import ({exc}); install "
                             "one of `pip install -e .[cpu]` or, on GPU hosts, `pip install -e .[gpu]`") from None
    for p in opts.precisions:
        if p not in PRECISIONS:
            raise unknown_choice("precision", p, PRECISIONS)
    if "fp32" not in opts.precisions:
        opts.precisions.insert(0, "fp32")  # the reference every other precision is checked against
    opts.precisions = [p for p in PRECISIONS if p in opts.precisions]
    from gemdeploy.calibration.int8 import CALIB_METHODS

    if opts.calib_method not in CALIB_METHODS:
        raise unknown_choice("calibration method", opts.calib_method, CALIB_METHODS)
    if opts.calib_samples < 1 or opts.verify_samples < 1:
        raise GemdeployError("--calib-samples and --verify-samples must be at least 1")
    if opts.max_int8_drop < 0:
        raise GemdeployError("--max-int8-drop must be >= 0 (accuracy points)")
    if not (1 <= opts.min_batch <= opts.opt_batch <= opts.max_batch):
        raise GemdeployError(f"need 1 <= --min-batch <= --opt-batch <= --max-batch "
                             f"(got {opts.min_batch}, {opts.opt_batch}, {opts.max_batch})")


def load_source(art: RunArtifacts) -> tuple[torch.nn.Module, str, torch.nn.Module, str | None]:
    """(model to export, 'compacted'|'finetuned', the fine-tuned masked model, note)."""
    masked = art.finetuned_model()
    if not art.run.has("compact.json"):
        return masked, "finetuned", masked, "the run has no compact.json: exporting the fine-tuned masked model"
    try:
        from gemdeploy.compaction import load_compacted_model
    except ImportError:
        return masked, "finetuned", masked, "gemdeploy.compaction is not available: exporting the fine-tuned masked model"
    compacted = load_compacted_model(art).eval()
    if art.config.pattern == "2:4":
        before = {k for k, v in torch_24_layers(masked).items() if v}
        after = torch_24_layers(compacted)
        if before and not all(after.get(k, True) for k in before):
            return masked, "finetuned", masked, ("compaction broke the 2:4 layout TensorRT needs: exporting the "
                                                 "fine-tuned masked model (2:4 kept)")
    return compacted, "compacted", masked, None


def accuracy(session, split, batch_size: int = 256) -> float:
    correct = total = 0
    for x, y in split.batches(batch_size):
        pred = ox.ort_run(session, x).argmax(1)
        correct += int((pred == y.cpu().numpy()).sum())
        total += len(y)
    return correct / max(1, total)


def _sidecar(path: Path, proto: onnx.ModelProto, **extra) -> dict:
    return {"file": path.name, "bytes": path.stat().st_size, "sha256": ox.file_sha256(path),
            "input": {"name": ox.INPUT_NAME, "shape": ["batch", *[d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim[1:]]]},
            "output": ox.OUTPUT_NAME, "graph": ox.graph_summary(proto), **extra}


def export_run(run_path: str | Path, opts: ExportOptions, log: Callable[[str], None] = lambda s: None) -> dict:
    validate(opts)
    art = RunArtifacts.open(run_path)
    out_dir = art.run.path / EXPORT_DIR
    existing = [n for n in planned_files(opts) if (out_dir / n).exists()]
    if existing and not opts.overwrite:
        raise GemdeployError(f"{out_dir} already holds {', '.join(existing[:3])}"
                             f"{' ...' if len(existing) > 3 else ''}; pass --overwrite to replace them")
    if opts.trt:
        # Fail fast on impossible combinations; a missing TensorRT is reported after the ONNX is written.
        from gemdeploy.exporters.tensorrt_build import cuda_status

        cuda = cuda_status()
        if cuda["available"] and "int8" in opts.precisions and float(cuda.get("capability", "0")) < 6.1:
            raise GemdeployError(f"--precision int8 needs a GPU with INT8 support (compute capability >= 6.1); "
                                 f"{cuda['gpu']} has {cuda['capability']}")
        if cuda["available"] and "fp16" in opts.precisions and float(cuda.get("capability", "0")) < 5.3:
            raise GemdeployError(f"--precision fp16 needs compute capability >= 5.3; {cuda['gpu']} has {cuda['capability']}")

    started = time.perf_counter()
    model, source, masked, note = load_source(art)
    if note:
        log(note)
    data = art.data("cpu")
    verify_images = data.sample_images(opts.verify_samples, "test").float().cpu()
    reference = ox.torch_logits(model, verify_images)
    pattern = art.config.pattern
    record: dict = {"run": str(art.run.path), "model": art.config.model, "data": art.config.data,
                    "pattern": pattern, "source": source, "source_note": note, "precisions": opts.precisions,
                    "verify_samples": int(len(verify_images)), "artifacts": {}, "accuracy": {}, "sizes": {}}

    out_dir.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(dir=out_dir, prefix=".staging-"))
    try:
        # ---- fp32
        proto, exporter = ox.torch_to_onnx(model, verify_images, exporter=opts.exporter)
        ox.full_check(proto)
        proto, simplified = ox.simplify(proto)
        record["exporter"] = exporter
        fp32_path = stage / "model.fp32.onnx"
        check = ox.write_verified(proto, fp32_path, lambda p: ox.verify(p, model, verify_images, "fp32", reference),
                                  "the fp32 ONNX")
        report24 = onnx_24_report(proto)
        record["sparsity_24"] = {"eligible": len(report24), "sparse": sum(report24.values()),
                                 "tensors": report24}
        if pattern == "2:4" and not all(report24.values()):
            raise GemdeployError(f"the 2:4 layout did not survive export: {sum(not v for v in report24.values())} "
                                 f"of {len(report24)} eligible tensors are not 2:4 "
                                 f"(e.g. {next(k for k, v in report24.items() if not v)})")
        fp32_session = ox.ort_session(fp32_path)
        real = bool(getattr(data, "real", True))
        fp32_acc = accuracy(fp32_session, data.test) if real else None
        record["accuracy"]["fp32"] = fp32_acc
        sidecars = {"fp32": _sidecar(fp32_path, proto, precision="fp32", source=source, exporter=exporter,
                                     simplified=simplified, verification=check, test_acc=fp32_acc,
                                     sparsity_24=record["sparsity_24"] | {"tensors": None})}
        log(f"fp32 ONNX verified: max |diff| {check['max_abs_diff']:.2g} (tolerance {check['tolerance']:.2g})")

        # ---- fp16
        if "fp16" in opts.precisions:
            half = ox.to_fp16(proto)
            ox.full_check(half)
            path = stage / "model.fp16.onnx"
            check16 = ox.write_verified(half, path, lambda p: ox.verify(p, model, verify_images, "fp16", reference),
                                        "the fp16 ONNX")
            acc16 = accuracy(ox.ort_session(path), data.test) if real else None
            record["accuracy"]["fp16"] = acc16
            sidecars["fp16"] = _sidecar(path, half, precision="fp16", source=source, exporter=exporter,
                                        verification=check16, test_acc=acc16)
            log(f"fp16 ONNX verified: top-1 agreement {check16['top1_agreement']:.2%}")

        # ---- int8 (Q/DQ)
        if "int8" in opts.precisions:
            from gemdeploy.calibration.int8 import qdq_report, quantize_int8

            calib = data.sample_images(opts.calib_samples, "train").float().cpu()
            path = stage / "model.int8.onnx"
            calib_rec = quantize_int8(fp32_path, path, calib, method=opts.calib_method,
                                      cache_dir=out_dir / "calib-cache")
            os.chmod(path, 0o644)
            q = onnx.load(str(path))
            ox.full_check(q)
            structure = qdq_report(q)
            quantized = [k for k, v in structure["layers"].items() if v["weight_int8"]]
            if not quantized or not structure["symmetric"]:
                path.unlink(missing_ok=True)
                raise GemdeployError("INT8 quantization produced no symmetric Q/DQ weights; model.int8.onnx not written")
            check8 = ox.verify(path, model, verify_images, "int8", reference)
            if not check8["ok"]:
                path.unlink(missing_ok=True)
                raise GemdeployError(f"the INT8 ONNX failed verification, not written: {ox.describe_failure(check8)}")
            acc8 = accuracy(ox.ort_session(path), data.test) if real else None
            record["accuracy"]["int8"] = acc8
            drop = None if acc8 is None else round((fp32_acc - acc8) * 100, 3)
            record["int8_drop_points"] = drop
            record["int8_drop_ok"] = drop is None or drop <= opts.max_int8_drop
            record["max_int8_drop"] = opts.max_int8_drop
            sidecars["int8"] = _sidecar(path, q, precision="int8", source=source, calibration=calib_rec,
                                        qdq={k: v for k, v in structure.items() if k != "layers"},
                                        quantized_layers=len(quantized), verification=check8, test_acc=acc8,
                                        fp32_test_acc=fp32_acc, drop_points=drop, max_drop_points=opts.max_int8_drop)
            log(f"INT8 Q/DQ ONNX: {len(quantized)} layers quantized, calibration "
                f"{'from cache' if calib_rec['cache_hit'] else opts.calib_method}")

        # ---- sizes: dense (masked, uncompacted) vs compacted vs sparse storage
        fp32_bytes = fp32_path.stat().st_size
        if source == "compacted":
            dense_proto, _ = ox.torch_to_onnx(masked, verify_images, exporter=opts.exporter)
            dense_proto, _ = ox.simplify(dense_proto)
            record["sizes"]["dense_bytes"] = len(dense_proto.SerializeToString())
            record["sizes"]["compacted_bytes"] = fp32_bytes
        else:
            record["sizes"]["dense_bytes"] = fp32_bytes
            record["sizes"]["compacted_bytes"] = None
        sparse_proto, names = ox.to_sparse_storage(proto) if opts.sparse_storage else (None, [])
        if opts.sparse_storage and not names:
            record["sizes"]["sparse_storage_bytes"] = fp32_bytes
            record["sizes"]["sparse_storage_note"] = ("no weight is smaller in COO storage (needs under 1/3 density): "
                                                      "model.sparse.onnx would equal model.fp32.onnx, not written")
        if names:
            path = stage / "model.sparse.onnx"
            check_sp = ox.write_verified(sparse_proto, path,
                                         lambda p: ox.verify(p, model, verify_images, "fp32", reference),
                                         "the sparse-storage ONNX")
            record["sizes"]["sparse_storage_bytes"] = path.stat().st_size
            sidecars["sparse"] = _sidecar(path, sparse_proto, precision="fp32", source=source, storage="sparse_initializer (COO, int64 indices)",
                                          sparse_tensors=names, verification=check_sp,
                                          note="ONNX Runtime densifies sparse initializers at load time; TensorRT's "
                                               "parser does not read them, so engines are built from model.fp32.onnx")
        record["sizes"]["int8_bytes"] = sidecars["int8"]["bytes"] if "int8" in sidecars else None

        # ---- commit: every file verified; move them into place (and drop a stale file this export replaces)
        if opts.sparse_storage and "sparse" not in sidecars:  # (only ever a file --overwrite allowed)
            for stale in ("model.sparse.onnx", "model.sparse.json"):
                (out_dir / stale).unlink(missing_ok=True)
        for key, side in sidecars.items():
            name = side["file"]
            os.replace(stage / name, out_dir / name)
            write_json(out_dir / name.replace(".onnx", ".json"), side)
            record["artifacts"][key] = name
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    record["export_seconds"] = round(time.perf_counter() - started, 2)

    # ---- TensorRT
    record["tensorrt"] = None
    if opts.trt:
        from gemdeploy.exporters.tensorrt_build import build_engine, require_tensorrt

        try:
            require_tensorrt()
        except GemdeployError:
            record["tensorrt"] = {"built": False}
            write_json(out_dir / "export.json", record)
            raise
        sparse = bool(record["sparsity_24"]["sparse"])
        cache = Path(opts.timing_cache) if opts.timing_cache else _default_timing_cache()
        engines = {}
        for p in opts.precisions:
            engines[p] = build_engine(out_dir / f"model.{p}.onnx", out_dir / f"engine.{p}.plan",
                                      input_shape=art.input_shape, precision=p, sparse=sparse,
                                      min_batch=opts.min_batch, opt_batch=opts.opt_batch, max_batch=opts.max_batch,
                                      workspace_mib=opts.workspace_mib, timing_cache=cache)
            log(f"TensorRT {p} engine: {len(engines[p]['sparse_layers'])} layers with sparse tactics")
        record["tensorrt"] = {"built": True, "engines": {p: f"engine.{p}.plan" for p in engines}}
    write_json(out_dir / "export.json", record)
    return record


def options_dict(opts: ExportOptions) -> dict:
    return asdict(opts)


__all__ = ["ExportOptions", "PRECISIONS", "export_run", "planned_files"]
