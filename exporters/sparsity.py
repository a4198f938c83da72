"""TensorRT's 2:4 structured sparsity layout, in PyTorch and in ONNX files.

The layout (docs/design.md, section 3): for a conv weight [K, C, R, S], every 4 consecutive input channels of
each output channel and kernel position hold at least 2 zeros; for a Linear (ONNX Gemm with transB=1,
weight [out, in]) along in_features; for a MatMul weight [in, out] along axis 0. ``onnx_24_report``
walks the graph the way NVIDIA's ``polygraphy inspect sparsity`` does (same eligible tensors and axes, but for
grouped convolutions, which no gemdeploy ticket gives the pattern) and checks each tensor with numpy, so it is
fast enough for every export.
"""

from __future__ import annotations

import numpy as np
import onnx
import torch
from onnx import numpy_helper
from torch import nn

from gemdeploy.sparsity.nm import nm_mask_from_scores, satisfies_nm

# Ops that pass a weight through unchanged along the checked axis (polygraphy follows the same ones).
_PASS_THROUGH = {"Cast", "DequantizeLinear", "QuantizeLinear", "Identity"}


def is_24(array: np.ndarray, axis: int) -> bool:
    """At least 2 zeros in every 4 consecutive entries along ``axis`` (axis length a multiple of 4)."""
    moved = np.moveaxis(np.asarray(array), axis, -1)
    groups = moved.reshape(-1, moved.shape[-1] // 4, 4)
    return bool(((groups == 0).sum(-1) >= 2).all())


def eligible_weights(proto: onnx.ModelProto) -> dict[str, int]:
    """Initializer name -> axis along which TensorRT needs the 2:4 pattern (polygraphy's walk)."""
    inits = {i.name: i for i in proto.graph.initializer}
    producers = {out: n for n in proto.graph.node for out in n.output}
    found: dict[str, int] = {}

    def track(name: str, axis: int) -> None:
        seen = 0
        while name not in inits and name in producers and seen < 8:
            node = producers[name]
            if node.op_type in _PASS_THROUGH:
                name = node.input[0]
            elif node.op_type == "Transpose":
                perm = next((list(a.ints) for a in node.attribute if a.name == "perm"), None)
                if perm is None:
                    return
                axis, name = perm[axis], node.input[0]
            else:
                return
            seen += 1
        if name in inits:
            found[name] = axis

    for node in proto.graph.node:
        if node.op_type == "Conv":
            # A grouped conv never gets the pattern (mine and the PyTorch side skip it, as TensorRT's sparse
            # kernels do); polygraphy lists its weight too, so it would call every grouped conv "not sparse".
            if any(a.name == "group" and a.i != 1 for a in node.attribute):
                continue
            track(node.input[1], 1)
        elif node.op_type == "MatMul":
            track(node.input[1], 0)
        elif node.op_type == "Gemm":
            trans_b = any(a.name == "transB" and a.i == 1 for a in node.attribute)
            track(node.input[1], 1 if trans_b else 0)
    out = {}
    for name, axis in found.items():
        t = inits[name]
        if t.data_type not in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16):
            continue
        if axis < len(t.dims) and t.dims[axis] % 4 == 0:
            out[name] = axis
    return out


def onnx_24_report(proto: onnx.ModelProto) -> dict[str, bool]:
    """Eligible weight -> does it follow the 2:4 pattern."""
    inits = {i.name: i for i in proto.graph.initializer}
    return {name: is_24(numpy_helper.to_array(inits[name]), axis) for name, axis in eligible_weights(proto).items()}


def _eligible_modules(model: nn.Module):
    """Ungrouped Conv2d and Linear layers whose input channels are a multiple of 4 (TensorRT's candidates)."""
    for name, m in model.named_modules():
        if (isinstance(m, nn.Conv2d) and m.groups == 1 and m.in_channels % 4 == 0) or \
                (isinstance(m, nn.Linear) and m.in_features % 4 == 0):
            yield name, m


def torch_24_layers(model: nn.Module) -> dict[str, bool]:
    """Eligible Conv2d/Linear (input channels a multiple of 4, not grouped) -> holds 2:4."""
    return {name: satisfies_nm(m.weight.detach(), 2, 4) for name, m in _eligible_modules(model)}


def has_24_layers(model: nn.Module) -> bool:
    return any(torch_24_layers(model).values())


def apply_24_magnitude_(model: nn.Module) -> dict[str, torch.Tensor]:
    """Zero the 2 smallest-magnitude weights of every 4 along the input channels of each eligible layer
    (TensorRT's layout); returns the masks. For tests and benchmarks of 2:4 runs."""
    masks = {}
    with torch.no_grad():
        for name, m in _eligible_modules(model):
            mask = nm_mask_from_scores(m.weight.abs(), 2, 4)
            m.weight.mul_(mask)
            masks[f"{name}.weight"] = mask
    return masks
