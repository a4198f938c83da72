"""PyTorch -> ONNX (fp32, fp16, sparse storage), checked, simplified and verified with ONNX Runtime.

Every file is written to a temporary name in its destination folder, verified there, and only then
renamed into place: a file that fails verification never appears under its final name.
"""

from __future__ import annotations

import io
import os
import re
import tempfile
from pathlib import Path
from typing import Callable

import numpy as np
import onnx
import torch
from onnx import numpy_helper
from torch import nn

from gemdeploy.errors import GemdeployError
from gemdeploy.files import user_permissions
from gemdeploy.models import fp32_bytes
from gemdeploy.numerics import explained_by_rounding, rounding_sensitivity, unreproducible
from gemdeploy.progress import quiet

OPSET = 18  # >= 17 (LayerNorm etc.); both TensorRT 10 and 11 parse opset 18
INPUT_NAME = "input"
OUTPUT_NAME = "logits"
EXPORTERS = ("auto", "dynamo", "torchscript")
FP32_REL_TOL = 1e-4  # max |ORT - PyTorch| <= 1e-4 * max |logit|
FP16_MIN_AGREEMENT = 0.995  # top-1 agreement of the fp16 graph with PyTorch fp32
# One ONNX file is one protobuf message, which cannot exceed 2 GiB; the graph itself takes a little beside the
# weights, hence the margin. (Weights over it would need ONNX's external-data files, which gemdeploy does not write.)
ONE_FILE_WEIGHT_BYTES = (1 << 31) - (64 << 20)


def require_one_file(model: nn.Module, what: str, remedy: str) -> None:
    """Refuse in one line, before any export work, a model whose fp32 ONNX file could not be written."""
    size = fp32_bytes(model.state_dict().values())
    if size > ONE_FILE_WEIGHT_BYTES:
        raise GemdeployError(f"{what} holds {size / 1e9:.2f} GB of fp32 weights, over the 2 GB one ONNX file (a "
                             f"protobuf message) can hold; gemdeploy writes single-file ONNX: {remedy}")


def _export_dynamo(model: nn.Module, example: torch.Tensor, opset: int) -> onnx.ModelProto:
    batch = torch.export.Dim("batch", min=1, max=1 << 16)
    program = torch.onnx.export(model, (example,), None, input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                                opset_version=opset, dynamo=True, dynamic_shapes=({0: batch},), verbose=False)
    return program.model_proto


def _export_torchscript(model: nn.Module, example: torch.Tensor, opset: int) -> onnx.ModelProto:
    buf = io.BytesIO()
    torch.onnx.export(model, (example,), buf, input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                      opset_version=opset, dynamo=False, do_constant_folding=True,
                      dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}})
    return onnx.load_from_string(buf.getvalue())


def torch_to_onnx(model: nn.Module, example: torch.Tensor, *, exporter: str = "auto", opset: int = OPSET
                  ) -> tuple[onnx.ModelProto, str]:
    """Export an eval-mode model with a dynamic batch dimension; returns (model, exporter used).

    ``auto`` uses torch.export (the maintained exporter: it folds BatchNorm into Conv/Gemm and keeps
    Linear as Gemm with transB=1, TensorRT's sparse layout) and falls back to the TorchScript exporter
    if torch.export cannot trace the model.
    """
    if exporter not in EXPORTERS:
        raise GemdeployError(f"unknown exporter {exporter!r}; choose one of: {', '.join(EXPORTERS)}")
    model = model.eval().cpu()
    example = example[:2].float().cpu()
    errors, ops = [], []
    order = ["dynamo", "torchscript"] if exporter == "auto" else [exporter]
    for name in order:
        try:
            with quiet(), torch.no_grad():
                proto = _export_dynamo(model, example, opset) if name == "dynamo" else _export_torchscript(model, example, opset)
            proto.producer_name = "gemdeploy"
            return proto, name
        except Exception as exc:  # noqa: BLE001 - every exporter failure is reported below
            text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).strip()  # the dynamo exporter colors its messages
            errors.append(f"{name}: {text.splitlines()[0] if text else type(exc).__name__}")
            ops += [op for op in _failed_ops(exc) if op not in ops]
    if ops:
        raise GemdeployError(f"ONNX export failed: no ONNX (opset {opset}) conversion for {', '.join(ops)} in the "
                             f"model; replace that op (" + "; ".join(errors) + ")")
    raise GemdeployError("ONNX export failed (" + "; ".join(errors) + ")")


_OP_PATTERNS = (re.compile(r"operator '(aten::\w+)'"), re.compile(r"translating node .*?target=(?:torch\.ops\.)?(aten\.\w+)"),
                re.compile(r"[Uu]nsupported.*?(aten[.:]{1,2}\w+)"))


def _failed_ops(exc: BaseException) -> list[str]:
    """The aten ops an exporter says it cannot convert (its message, or the errors that caused it)."""
    found: list[str] = []
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        text = str(exc)
        for pattern in _OP_PATTERNS:
            for match in pattern.findall(text):
                op = match.replace("aten.", "aten::")
                if op not in found:
                    found.append(op)
        exc = exc.__cause__ or exc.__context__
    return found


def full_check(proto: onnx.ModelProto) -> None:
    try:
        onnx.checker.check_model(proto, full_check=True)
    except Exception as exc:  # noqa: BLE001 - onnx raises several types
        raise GemdeployError(f"onnx.checker rejected the exported model: {str(exc).splitlines()[0]}") from None


def simplify(proto: onnx.ModelProto) -> tuple[onnx.ModelProto, bool]:
    """onnxslim where it removes nodes; the original otherwise (returns (model, simplified?))."""
    try:
        import onnxslim

        with quiet():
            slim = onnxslim.slim(onnx.ModelProto.FromString(proto.SerializeToString()))
    except Exception:  # noqa: BLE001 - simplification is an optimization, never a requirement
        return proto, False
    if slim is None or len(slim.graph.node) >= len(proto.graph.node):
        return proto, False
    # onnxslim may rename the graph's I/O; keep ours.
    if [i.name for i in slim.graph.input] != [INPUT_NAME] or [o.name for o in slim.graph.output] != [OUTPUT_NAME]:
        return proto, False
    try:  # every file gemdeploy writes passes ONNX's full check; a simplification that breaks it is not taken
        onnx.checker.check_model(slim, full_check=True)
    except Exception:  # noqa: BLE001 - onnx raises several types
        return proto, False
    return slim, True


def to_fp16(proto: onnx.ModelProto) -> onnx.ModelProto:
    """fp16 weights and activations inside the graph (what TensorRT's strongly typed mode builds as FP16);
    the graph's input and output stay fp32 (one Cast at each end) so callers feed the same tensors."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    with quiet():
        half = convert_float_to_float16(onnx.ModelProto.FromString(proto.SerializeToString()), keep_io_types=True,
                                        disable_shape_infer=False)
    toposort_(half.graph)  # the converter appends its boundary Casts at the end of the node list
    return half


def toposort_(graph: onnx.GraphProto) -> None:
    """Order the nodes so each one comes after the producers of its inputs (ONNX requires it)."""
    available = {i.name for i in graph.input} | {i.name for i in graph.initializer} | \
                {i.values.name for i in graph.sparse_initializer} | {""}
    pending, ordered = list(graph.node), []
    while pending:
        ready = [n for n in pending if all(i in available for i in n.input)]
        if not ready:
            raise GemdeployError("the ONNX graph has a cycle or a dangling input; cannot order its nodes")
        for n in ready:
            ordered.append(n)
            available.update(n.output)
        ready_ids = {id(n) for n in ready}
        pending = [n for n in pending if id(n) not in ready_ids]
    copies = [onnx.NodeProto.FromString(n.SerializeToString()) for n in ordered]
    del graph.node[:]
    graph.node.extend(copies)


def to_sparse_storage(proto: onnx.ModelProto, min_saving: float = 0.0) -> tuple[onnx.ModelProto, list[str]]:
    """Store each weight whose zeros make it smaller in COO form (the non-zero values plus their int64 linear
    indices, 12 bytes per kept weight instead of 4 per weight), as a ``Constant`` node with a ``sparse_value``.

    Not as a graph ``sparse_initializer``: that is typed as a sparse tensor, which no Conv or Gemm input accepts, so
    ONNX's type inference (and `onnx.checker`'s full check, and every tool that runs it) rejects the model. A sparse
    Constant outputs a dense tensor. ONNX Runtime densifies it when it loads the model; TensorRT's ONNX parser is not
    given this file (engines are built from the dense files). Returns (model, names stored sparse)."""
    out = onnx.ModelProto.FromString(proto.SerializeToString())
    keep, constants, names = [], [], []
    for init in out.graph.initializer:
        arr = numpy_helper.to_array(init)
        if arr.dtype != np.float32 or arr.ndim < 2:
            keep.append(init)
            continue
        flat = arr.reshape(-1)
        nz = np.flatnonzero(flat)
        dense_bytes, sparse_bytes = flat.nbytes, nz.size * (4 + 8)
        if sparse_bytes >= dense_bytes * (1.0 - min_saving):
            keep.append(init)
            continue
        values = numpy_helper.from_array(flat[nz].astype(np.float32), name=init.name)
        indices = numpy_helper.from_array(nz.astype(np.int64), name=f"{init.name}.indices")
        constants.append(onnx.helper.make_node(
            "Constant", [], [init.name], name=f"{init.name}.sparse",
            sparse_value=onnx.helper.make_sparse_tensor(values, indices, list(arr.shape))))
        names.append(init.name)
    del out.graph.initializer[:]
    out.graph.initializer.extend(keep)
    nodes = constants + [onnx.NodeProto.FromString(n.SerializeToString()) for n in out.graph.node]
    del out.graph.node[:]
    out.graph.node.extend(nodes)  # the constants first: nodes stay in topological order
    full_check(out)
    return out, names


def sparse_constants(proto: onnx.ModelProto) -> int:
    """How many weights ``proto`` stores as sparse Constants (`to_sparse_storage`)."""
    return sum(1 for n in proto.graph.node if n.op_type == "Constant"
               and any(a.name == "sparse_value" for a in n.attribute))


# ---------------------------------------------------------------------------------------------
# ONNX Runtime


def ort_session(model: str | Path | bytes, providers: list[str] | None = None, *, optimize: bool = True):
    """An ONNX Runtime session. ``optimize=False`` disables every graph optimization: Q/DQ INT8 then runs as
    written (DequantizeLinear, then the float op), i.e. the quantized model's own numerics, which is what TensorRT
    executes; with optimizations on (the default, what users get) ONNX Runtime fuses Q/DQ into its INT8 kernels,
    whose arithmetic depends on the CPU (gemdeploy.calibration.x86_emulation)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if not optimize:
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    opts.intra_op_num_threads = max(1, min(4, os.cpu_count() or 1))
    src = str(model) if isinstance(model, (str, Path)) else model
    try:
        return ort.InferenceSession(src, sess_options=opts, providers=providers or ["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - ORT raises its own exception types
        raise GemdeployError(f"ONNX Runtime cannot load the model: {str(exc).strip().splitlines()[0]}") from None


def ort_run(session, images: np.ndarray | torch.Tensor, batch_size: int = 256) -> np.ndarray:
    if isinstance(images, torch.Tensor):
        images = images.detach().cpu().float().numpy()
    outs = [session.run([OUTPUT_NAME], {INPUT_NAME: images[i:i + batch_size]})[0]
            for i in range(0, len(images), batch_size)]
    return np.concatenate(outs).astype(np.float32)


def torch_logits(model: nn.Module, images: torch.Tensor, batch_size: int = 256) -> np.ndarray:
    with torch.no_grad():
        return torch.cat([model(images[i:i + batch_size].float()) for i in range(0, len(images), batch_size)]).numpy()


def compare(reference: np.ndarray, got: np.ndarray, precision: str) -> dict:
    """fp32: max abs diff <= 1e-4 x the logits' scale (max |logit|); fp16/int8: top-1 agreement."""
    diff = float(np.max(np.abs(reference - got))) if reference.size else 0.0
    scale = float(max(np.max(np.abs(reference)), 1e-6)) if reference.size else 1.0
    agreement = float(np.mean(reference.argmax(1) == got.argmax(1))) if reference.size else 1.0
    out = {"precision": precision, "samples": int(len(reference)), "max_abs_diff": diff, "logit_scale": scale,
           "top1_agreement": agreement}
    if precision == "fp32":
        out["tolerance"] = FP32_REL_TOL * scale
        out["ok"] = bool(np.isfinite(diff) and diff <= out["tolerance"])
    elif precision == "fp16":
        out["min_top1_agreement"] = FP16_MIN_AGREEMENT
        out["ok"] = bool(agreement >= FP16_MIN_AGREEMENT)
    else:
        out["ok"] = bool(np.isfinite(got).all())
    return out


def verify(path: str | Path, model: nn.Module, images: torch.Tensor, precision: str,
           reference: np.ndarray | None = None, *, optimize: bool = True) -> dict:
    """Run the ONNX file with ONNX Runtime on ``images`` and compare with PyTorch fp32."""
    reference = torch_logits(model, images) if reference is None else reference
    got = ort_run(ort_session(path, optimize=optimize), images)
    if got.shape != reference.shape:
        return {"precision": precision, "ok": False, "error": f"output shape {got.shape} != PyTorch's {reference.shape}"}
    return with_rounding_floor(compare(reference, got, precision), model, images)


def with_rounding_floor(check: dict, model: nn.Module, images: torch.Tensor) -> dict:
    """A failed check, with how far PyTorch's own logits move for one fp32 rounding step of the input (for
    `describe_failure`: a network that amplifies rounding fails every check, not because of its file)."""
    if not check["ok"] and "error" not in check and check["precision"] == "fp32":
        check["rounding_sensitivity"] = rounding_sensitivity(model, images)
    return check


def describe_failure(check: dict) -> str:
    if "error" in check:
        return check["error"]
    if check["precision"] == "fp32":
        what = (f"max |ONNX Runtime - PyTorch| = {check['max_abs_diff']:.3g} > {check['tolerance']:.3g} "
                f"(1e-4 x logit scale {check['logit_scale']:.3g}) on {check['samples']} images")
        sensitivity = check.get("rounding_sensitivity", 0.0)
        if explained_by_rounding(check["max_abs_diff"], check["tolerance"], sensitivity):
            return f"{what}, and {unreproducible(sensitivity, check['logit_scale'])}"
        return what
    if check["precision"] == "fp16":
        return f"top-1 agreement with PyTorch {check['top1_agreement']:.2%} < {FP16_MIN_AGREEMENT:.1%} on {check['samples']} images"
    return "non-finite outputs"


def write_verified(proto: onnx.ModelProto, dest: str | Path, check: Callable[[Path], dict], what: str) -> dict:
    """Save ``proto`` to a temp file next to ``dest``, run ``check`` on it, rename it into place only if
    the check passes; raise GemdeployError (and leave nothing behind) otherwise."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".tmp.onnx")
    os.close(fd)
    tmp = Path(tmp)
    try:
        data = proto.SerializeToString()
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        result = check(tmp)
        if not result.get("ok"):
            raise GemdeployError(f"{what} failed verification, not written: {describe_failure(result)}")
        user_permissions(tmp)  # a shippable file: readable like any other the user creates
        os.replace(tmp, dest)
        return result
    finally:
        tmp.unlink(missing_ok=True)


def graph_summary(proto: onnx.ModelProto) -> dict:
    from collections import Counter

    return {"opset": max((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), default=None),
            "nodes": len(proto.graph.node), "ops": dict(sorted(Counter(n.op_type for n in proto.graph.node).items())),
            "initializers": len(proto.graph.initializer), "sparse_initializers": len(proto.graph.sparse_initializer),
            "sparse_constants": sparse_constants(proto)}
