"""TensorRT engines from the typed ONNX, through the TensorRT Python API (10.x and 11.x).

Precision lives in the ONNX (docs/design.md, section 3): fp16 tensors or INT8 Q/DQ, parsed into a *strongly
typed* network, so no FP16/INT8 builder flags and no implicit calibrator (deprecated in TensorRT 10,
removed in 11). SPARSE_WEIGHTS lets TensorRT pick sparse tensor-core tactics for 2:4 layers; the engine
inspector (detailed profiling verbosity) tells which layers did. Attributes that moved between
versions are feature-detected, never assumed.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from gemdeploy.errors import GemdeployError
from gemdeploy.files import atomic_write_bytes, write_json

HOW_TO_GET = ("run inside NVIDIA's TensorRT container (the Dockerfile here: FROM nvcr.io/nvidia/tensorrt) "
              "or `pip install tensorrt` (or `pip install -e .[gpu]`) on a host with an NVIDIA GPU and driver")


def tensorrt_status() -> dict:
    """{'available', 'version', 'reason'}: whether `import tensorrt` gives a working TensorRT."""
    try:
        import tensorrt as trt  # noqa: F401
    except ImportError as exc:
        return {"available": False, "version": None,
                "reason": f"TensorRT is not installed (import tensorrt: {exc}); {HOW_TO_GET}"}
    except Exception as exc:  # noqa: BLE001 - the pip stubs raise at import when their libraries are missing
        return {"available": False, "version": None,
                "reason": f"TensorRT is installed but does not load ({str(exc).strip().splitlines()[0]}); {HOW_TO_GET}"}
    version = getattr(trt, "__version__", None)
    if not hasattr(trt, "Builder"):
        return {"available": False, "version": version,
                "reason": f"the tensorrt package {version or ''} is a stub without its libraries; {HOW_TO_GET}"}
    return {"available": True, "version": version, "reason": None}


def cuda_status() -> dict:
    try:
        import torch
    except ImportError:
        return {"available": False, "gpu": None, "reason": "PyTorch is not installed"}
    if not torch.cuda.is_available():
        why = "this PyTorch build has no CUDA" if torch.version.cuda is None else \
            f"no CUDA GPU visible (PyTorch {torch.__version__} built for CUDA {torch.version.cuda}; check the driver and CUDA_VISIBLE_DEVICES)"
        return {"available": False, "gpu": None, "reason": why}
    props = torch.cuda.get_device_properties(0)
    return {"available": True, "gpu": props.name, "capability": f"{props.major}.{props.minor}", "reason": None}


def require_tensorrt() -> None:
    """Raise one line naming what is missing for `--trt` and how to get it."""
    trt_info, cuda = tensorrt_status(), cuda_status()
    missing = []
    if not trt_info["available"]:
        missing.append(trt_info["reason"])
    if not cuda["available"]:
        missing.append(f"a CUDA GPU ({cuda['reason']})")
    if missing:
        raise GemdeployError("--trt needs TensorRT and a CUDA GPU; missing: " + "; ".join(missing)
                             + ". The verified ONNX files are in place")


def _flag(enum, *names):
    for name in names:
        if hasattr(enum, name):
            return getattr(enum, name)
    return None


def build_engine(onnx_path: str | Path, engine_path: str | Path, *, input_shape: tuple[int, int, int],
                 precision: str, sparse: bool, min_batch: int = 1, opt_batch: int = 32, max_batch: int = 256,
                 workspace_mib: int = 2048, timing_cache: str | Path | None = None) -> dict:
    """Build and save an engine; returns its JSON sidecar (also written next to the engine)."""
    require_tensorrt()
    import tensorrt as trt

    if not (1 <= min_batch <= opt_batch <= max_batch):
        raise GemdeployError(f"need 1 <= --min-batch <= --opt-batch <= --max-batch (got {min_batch}, {opt_batch}, {max_batch})")
    logger = trt.Logger(trt.Logger.WARNING)
    major = int(str(trt.__version__).split(".")[0])
    builder = trt.Builder(logger)
    flags = 0
    typed_flag = _flag(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED")  # 10.x; strong typing is the rule in 11
    if typed_flag is not None:
        flags |= 1 << int(typed_flag)
    strongly_typed = typed_flag is not None or major >= 11
    explicit_batch = _flag(trt.NetworkDefinitionCreationFlag, "EXPLICIT_BATCH")  # required < 10, gone in 11
    if explicit_batch is not None and major < 10:
        flags |= 1 << int(explicit_batch)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = []
        for i in range(parser.num_errors):
            err = parser.get_error(i)
            where = []
            for attr in ("node_name", "node_operator", "node"):
                fn = getattr(err, attr, None)
                if callable(fn):
                    try:
                        where.append(f"{attr}={fn()}")
                    except Exception:  # noqa: BLE001 - optional detail only
                        pass
            errors.append(f"[{i + 1}/{parser.num_errors}] {' '.join(where)}: {err.desc()} (code {err.code()})")
        raise GemdeployError(f"TensorRT's ONNX parser rejected {onnx_path}: " + " | ".join(errors))

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mib << 20)
    sparse_flag = _flag(trt.BuilderFlag, "SPARSE_WEIGHTS")
    if sparse and sparse_flag is not None:
        config.set_flag(sparse_flag)
    detailed = _flag(trt.ProfilingVerbosity, "DETAILED")
    if detailed is not None:
        config.profiling_verbosity = detailed
    if not strongly_typed and precision in ("fp16", "int8"):
        # TensorRT < 10 has no strongly typed networks: fall back to the precision flags it still has.
        for name in ("FP16", "INT8") if precision == "int8" else ("FP16",):
            if _flag(trt.BuilderFlag, name) is not None:
                config.set_flag(getattr(trt.BuilderFlag, name))

    profile = builder.create_optimization_profile()
    name = network.get_input(0).name
    c, h, w = input_shape
    profile.set_shape(name, (min_batch, c, h, w), (opt_batch, c, h, w), (max_batch, c, h, w))
    config.add_optimization_profile(profile)

    cache_bytes = b""
    if timing_cache is not None and Path(timing_cache).is_file():
        cache_bytes = Path(timing_cache).read_bytes()
    cache = config.create_timing_cache(cache_bytes)
    cache_reused = bool(cache_bytes)
    config.set_timing_cache(cache, ignore_mismatch=False)

    start = time.perf_counter()
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise GemdeployError(f"TensorRT could not build an engine from {onnx_path} (see TensorRT's messages above)")
    build_s = time.perf_counter() - start
    atomic_write_bytes(engine_path, bytes(serialized))
    if timing_cache is not None:
        atomic_write_bytes(timing_cache, bytes(config.get_timing_cache().serialize()))

    runtime = trt.Runtime(logger)
    engine = runtime.deserialize_cuda_engine(bytes(serialized))
    layers = _inspect_layers(engine)
    cuda = cuda_status()
    sidecar = {
        "tensorrt": trt.__version__, "gpu": cuda.get("gpu"), "compute_capability": cuda.get("capability"),
        "precision": precision, "strongly_typed": strongly_typed, "sparse_weights_flag": bool(sparse and sparse_flag is not None),
        "profile": {"input": name, "min": [min_batch, c, h, w], "opt": [opt_batch, c, h, w], "max": [max_batch, c, h, w]},
        "workspace_mib": workspace_mib, "timing_cache": str(timing_cache) if timing_cache else None,
        "timing_cache_reused": cache_reused, "build_seconds": round(build_s, 3), "onnx": str(onnx_path),
        "engine_bytes": os.path.getsize(engine_path), "layers": len(layers),
        "sparse_layers": [l["name"] for l in layers if l.get("sparse")],
    }
    write_json(Path(engine_path).with_suffix(".json"), sidecar)
    return sidecar


def _inspect_layers(engine) -> list[dict]:
    """Per-layer information from the engine inspector; a layer runs a sparse tensor-core tactic when its
    tactic name says so (TensorRT names those kernels ``..._sparse_...``)."""
    import tensorrt as trt

    if not hasattr(engine, "create_engine_inspector"):
        return []
    inspector = engine.create_engine_inspector()
    fmt = _flag(trt.LayerInformationFormat, "JSON")
    try:
        info = json.loads(inspector.get_engine_information(fmt))
    except (TypeError, ValueError):
        return []
    out = []
    for layer in info.get("Layers", []):
        if isinstance(layer, str):  # without DETAILED verbosity layers are bare names
            out.append({"name": layer})
            continue
        out.append({"name": layer.get("Name"), "type": layer.get("LayerType"), "tactic": layer.get("TacticName"),
                    "sparse": "sparse" in str(layer.get("TacticName", "")).lower()})
    return out
