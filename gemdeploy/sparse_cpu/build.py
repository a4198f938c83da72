"""PyTorch model -> sparse CPU op graph + arrays (the export side; needs torch).

The eval-mode model is traced with torch.fx and shape-propagated on a dummy batch; each node becomes one op of a
small JSON graph. Then, in order:
  * every BatchNorm (running statistics) is folded into the conv/linear feeding it (weight x scale, bias), or kept
    as a per-channel ``affine`` op where that producer has other readers;
  * a residual add whose operand comes from a conv/linear read only by that add becomes the layer's ``residual``
    (its output buffer starts as bias + residual; the sparse product accumulates into it);
  * a ReLU / ReLU6 whose input is read by nothing else is fused into its producer.
Each conv/linear weight is stored as CSR over its (out, in x kh x kw) matrix; a grouped conv is stored as its
block-diagonal equivalent (the zeros outside the groups cost nothing in CSR).
Anything else is refused with one line naming the layer type the runtime lacks.
"""

from __future__ import annotations

import operator

import numpy as np
import torch
import torch.fx as fx
from torch import nn
from torch.nn import functional as F

from gemdeploy.errors import GemdeployError
from gemdeploy.sparse_cpu.runtime import FILE_FORMAT, FORMAT_VERSION

SUPPORTED = ("Conv2d (zero padding, no dilation)", "Linear", "BatchNorm1d/2d", "ReLU", "ReLU6", "MaxPool2d",
             "AvgPool2d (no padding)", "AdaptiveAvgPool2d", "Flatten", "Dropout", "Identity", "residual add")
_ADD = {operator.add, operator.iadd, torch.add}
_RELU = {F.relu, torch.relu}
_FLATTEN = {torch.flatten}


def _refuse(what: str, where: str) -> GemdeployError:
    return GemdeployError(f"the sparse CPU runtime has no {what} (at {where}); it runs {', '.join(SUPPORTED)}")


def _pair(v) -> list[int]:
    return [int(v), int(v)] if isinstance(v, int) else [int(i) for i in v]


class _Node:
    """One op while the graph is being built (becomes one JSON entry)."""

    def __init__(self, op: str, name: str, inputs: list[str], output: str, **attrs):
        self.op, self.name, self.inputs, self.output, self.attrs = op, name, inputs, output, attrs
        self.residual: str | None = None
        self.activation = None
        self.weight: np.ndarray | None = None  # (out, in, kh, kw) or (out, in), float64 while folding
        self.bias: np.ndarray | None = None


def _shape(node: fx.Node) -> tuple[int, ...] | None:
    meta = node.meta.get("tensor_meta")
    return tuple(meta.shape) if meta is not None and hasattr(meta, "shape") else None


def trace(model: nn.Module, input_shape: tuple[int, int, int], name: str = "model") -> tuple[dict, dict[str, np.ndarray]]:
    """(graph, arrays) of an eval-mode model for the sparse CPU runtime; GemdeployError for what it cannot run."""
    model = model.eval().cpu()
    try:
        gm = fx.symbolic_trace(model)
    except Exception as exc:  # noqa: BLE001 - fx raises many types on data-dependent control flow
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise GemdeployError(f"the sparse CPU runtime cannot trace {name} with torch.fx ({first})") from None
    from torch.fx.passes.shape_prop import ShapeProp

    with torch.no_grad():
        ShapeProp(gm).propagate(torch.zeros(2, *input_shape))
    nodes: list[_Node] = []
    alias: dict[str, str] = {}  # values that are another value (Identity, Dropout, empty Sequential)
    output = None

    def src(a) -> str:
        if not isinstance(a, fx.Node):
            raise _refuse(f"operation on a constant ({a!r})", "a non-tensor operand")
        return alias.get(a.name, a.name)

    for n in gm.graph.nodes:
        where = f"{n.target}" if n.op != "call_function" else getattr(n.target, "__name__", str(n.target))
        shape = _shape(n)
        if n.op == "placeholder":
            if n.name != "input":
                alias[n.name] = "input"
            continue
        if n.op == "output":
            output = src(n.args[0])
            continue
        if n.op == "get_attr":
            raise _refuse(f"parameter read outside a layer ({n.target})", where)
        if n.op == "call_module":
            mod = gm.get_submodule(n.target)
            nodes.extend(_module_node(mod, n, src, shape, alias, where))
            continue
        fn = n.target
        if n.op == "call_function" and fn in _ADD or n.op == "call_method" and fn in ("add", "add_", "__add__"):
            args = [*n.args, *n.kwargs.values()]
            if len(args) != 2 or not all(isinstance(a, fx.Node) for a in args):
                raise _refuse("add with a constant or a scale", where)
            nodes.append(_Node("add", n.name, [src(args[0]), src(args[1])], n.name))
        elif n.op == "call_function" and fn in _RELU or n.op == "call_method" and fn in ("relu", "relu_"):
            nodes.append(_Node("relu", n.name, [src(n.args[0])], n.name))
        elif n.op == "call_function" and fn in _FLATTEN or n.op == "call_method" and fn == "flatten":
            start = n.args[1] if len(n.args) > 1 else n.kwargs.get("start_dim", 0)
            end = n.args[2] if len(n.args) > 2 else n.kwargs.get("end_dim", -1)
            in_rank = len(_shape(n.args[0]) or ())
            if start != 1 or end not in (-1, in_rank - 1):
                raise _refuse(f"flatten(start_dim={start}, end_dim={end})", where)
            nodes.append(_Node("flatten", n.name, [src(n.args[0])], n.name))
        elif n.op == "call_function" and fn is F.adaptive_avg_pool2d:
            nodes.append(_Node("adaptive_avgpool2d", n.name, [src(n.args[0])], n.name, output_size=list(shape[2:])))
        elif n.op == "call_function" and fn in (F.dropout,):
            alias[n.name] = src(n.args[0])
        else:
            kind = "method" if n.op == "call_method" else "function"
            raise _refuse(f"{kind} {where}", n.name)
    if output is None:
        raise GemdeployError(f"{name} has no output")
    for fuse in (_fold_batchnorm, _fuse_residual_adds, _fuse_activations):
        renamed: dict[str, str] = {}
        nodes = fuse(nodes, output, renamed)
        output = renamed.get(output, output)
    return _serialize(nodes, output, input_shape, name)


def _module_node(mod: nn.Module, n: fx.Node, src, shape, alias: dict, where: str) -> list[_Node]:
    x = src(n.args[0])
    t = type(mod).__name__
    if isinstance(mod, nn.Conv2d):
        if mod.padding_mode != "zeros" or isinstance(mod.padding, str) and mod.padding != "valid":
            raise _refuse(f"Conv2d with padding {mod.padding!r}/{mod.padding_mode}", where)
        if tuple(_pair(mod.dilation)) != (1, 1):
            raise _refuse("Conv2d with dilation", where)
        w = mod.weight.detach().double().numpy()
        cout, cin_g, kh, kw = w.shape
        g = mod.groups
        full = np.zeros((cout, cin_g * g, kh, kw))
        per = cout // g
        for i in range(g):  # a grouped conv as the block-diagonal dense conv it equals
            full[i * per:(i + 1) * per, i * cin_g:(i + 1) * cin_g] = w[i * per:(i + 1) * per]
        node = _Node("conv2d", where, [x], n.name, in_channels=cin_g * g, out_channels=cout, kernel_size=[kh, kw],
                     stride=_pair(mod.stride), padding=[0, 0] if mod.padding == "valid" else _pair(mod.padding),
                     groups=g, in_shape=list(_shape(n.args[0])[1:]), out_shape=list(shape[1:]))
        node.weight = full
        node.bias = mod.bias.detach().double().numpy() if mod.bias is not None else np.zeros(cout)
        return [node]
    if isinstance(mod, nn.Linear):
        in_shape = _shape(n.args[0])
        if in_shape is not None and len(in_shape) != 2:
            raise _refuse(f"Linear on a {len(in_shape)}-D input", where)
        node = _Node("linear", where, [x], n.name, in_features=mod.in_features, out_features=mod.out_features)
        node.weight = mod.weight.detach().double().numpy()
        node.bias = mod.bias.detach().double().numpy() if mod.bias is not None else np.zeros(mod.out_features)
        return [node]
    if isinstance(mod, (nn.BatchNorm1d, nn.BatchNorm2d)):
        if mod.running_mean is None or mod.running_var is None:
            raise _refuse(f"{t} without running statistics", where)
        if isinstance(mod, nn.BatchNorm1d) and shape is not None and len(shape) != 2:
            raise _refuse("BatchNorm1d on a 3-D input", where)
        inv = 1.0 / np.sqrt(mod.running_var.detach().double().numpy() + mod.eps)
        gamma = mod.weight.detach().double().numpy() if mod.weight is not None else 1.0
        beta = mod.bias.detach().double().numpy() if mod.bias is not None else 0.0
        scale = gamma * inv
        shift = beta - mod.running_mean.detach().double().numpy() * scale
        node = _Node("affine", where, [x], n.name, channels=int(mod.num_features))
        node.weight, node.bias = np.broadcast_to(scale, (mod.num_features,)).copy(), np.broadcast_to(shift, (mod.num_features,)).copy()
        return [node]
    if isinstance(mod, nn.ReLU):
        return [_Node("relu", where, [x], n.name)]
    if isinstance(mod, (nn.ReLU6, nn.Hardtanh)):
        lo, hi = (0.0, 6.0) if isinstance(mod, nn.ReLU6) else (float(mod.min_val), float(mod.max_val))
        return [_Node("clip", where, [x], n.name, min=lo, max=hi)]
    if isinstance(mod, nn.MaxPool2d):
        if tuple(_pair(mod.dilation)) != (1, 1) or mod.return_indices:
            raise _refuse("MaxPool2d with dilation or indices", where)
        k = _pair(mod.kernel_size)
        return [_Node("maxpool2d", where, [x], n.name, kernel_size=k, stride=_pair(mod.stride or k),
                      padding=_pair(mod.padding), ceil_mode=bool(mod.ceil_mode))]
    if isinstance(mod, nn.AvgPool2d):
        k = _pair(mod.kernel_size)
        if _pair(mod.padding) != [0, 0] or mod.ceil_mode or mod.divisor_override:
            raise _refuse("AvgPool2d with padding, ceil mode or a divisor override", where)
        return [_Node("avgpool2d", where, [x], n.name, kernel_size=k, stride=_pair(mod.stride or k))]
    if isinstance(mod, nn.AdaptiveAvgPool2d):
        return [_Node("adaptive_avgpool2d", where, [x], n.name, output_size=list(shape[2:]))]
    if isinstance(mod, nn.Flatten):
        if mod.start_dim != 1 or mod.end_dim != -1:
            raise _refuse(f"Flatten(start_dim={mod.start_dim}, end_dim={mod.end_dim})", where)
        return [_Node("flatten", where, [x], n.name)]
    if isinstance(mod, (nn.Identity, nn.Dropout)) or isinstance(mod, nn.Sequential) and len(mod) == 0:
        alias[n.name] = x
        return []
    raise _refuse(t, where)


def _readers(nodes: list[_Node], output: str) -> dict[str, int]:
    count: dict[str, int] = {output: 1}  # the model's output counts as a reader: it is never fused away
    for nd in nodes:
        for v in (*nd.inputs, *([nd.residual] if nd.residual else [])):
            count[v] = count.get(v, 0) + 1
    return count


def _fold_batchnorm(nodes: list[_Node], output: str, renamed: dict[str, str]) -> list[_Node]:
    by_out = {nd.output: nd for nd in nodes}
    readers = _readers(nodes, output)
    out = []
    for nd in nodes:
        nd.inputs = [renamed.get(i, i) for i in nd.inputs]
        prev = by_out.get(nd.inputs[0]) if nd.inputs else None
        if (nd.op == "affine" and prev is not None and prev.op in ("conv2d", "linear") and prev.activation is None
                and prev.residual is None and readers.get(prev.output, 0) == 1):
            scale, shift = nd.weight, nd.bias
            prev.weight = prev.weight * scale.reshape((-1,) + (1,) * (prev.weight.ndim - 1))
            prev.bias = prev.bias * scale + shift
            renamed[nd.output] = prev.output
            continue
        out.append(nd)
    return out


def _fuse_residual_adds(nodes: list[_Node], output: str, renamed: dict[str, str]) -> list[_Node]:
    readers = _readers(nodes, output)
    by_out = {nd.output: nd for nd in nodes}
    out = []
    for nd in nodes:
        nd.inputs = [renamed.get(i, i) for i in nd.inputs]
        if nd.op == "add":
            for k in (0, 1):  # prefer the first operand, as the model wrote it
                a, other = nd.inputs[k], nd.inputs[1 - k]
                prod = by_out.get(a)
                if (prod is not None and prod.op in ("conv2d", "linear") and prod.residual is None and prod.activation
                        is None and readers.get(a, 0) == 1 and a != other):
                    prod.residual = other
                    out.remove(prod)
                    out.append(prod)  # runs where the add ran: both operands exist there
                    renamed[nd.output] = prod.output
                    break
            else:
                out.append(nd)
            continue
        out.append(nd)
    return out


def _fuse_activations(nodes: list[_Node], output: str, renamed: dict[str, str]) -> list[_Node]:
    readers = _readers(nodes, output)
    by_out = {nd.output: nd for nd in nodes}
    out = []
    for nd in nodes:
        nd.inputs = [renamed.get(i, i) for i in nd.inputs]
        if nd.residual:
            nd.residual = renamed.get(nd.residual, nd.residual)
        prev = by_out.get(nd.inputs[0]) if nd.inputs else None
        if (nd.op in ("relu", "clip") and prev is not None and prev.op in ("conv2d", "linear", "add", "affine")
                and prev.activation is None and readers.get(prev.output, 0) == 1 and prev in out):
            prev.activation = "relu" if nd.op == "relu" else ["clip", nd.attrs["min"], nd.attrs["max"]]
            renamed[nd.output] = prev.output
            continue
        out.append(nd)
    return out


def _csr(w2d: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rows, cols = np.nonzero(w2d)
    indptr = np.zeros(w2d.shape[0] + 1, np.int32)
    np.cumsum(np.bincount(rows, minlength=w2d.shape[0]), out=indptr[1:])
    return indptr, cols.astype(np.int32), w2d[rows, cols].astype(np.float32)


def _serialize(nodes: list[_Node], output: str, input_shape, name: str) -> tuple[dict, dict[str, np.ndarray]]:
    tensors: dict[str, np.ndarray] = {}
    ops, seen = [], set()
    for nd in nodes:
        key = nd.name
        while key in seen:  # a module called twice (shared weights) keeps its name; its arrays need their own keys
            key += "'"
        seen.add(key)
        spec = {"op": nd.op, "name": nd.name, "inputs": nd.inputs, "output": nd.output, **nd.attrs}
        if nd.residual:
            spec["residual"] = nd.residual
        if nd.activation is not None:
            spec["activation"] = nd.activation
        if nd.op in ("conv2d", "linear"):
            w2d = nd.weight.reshape(nd.weight.shape[0], -1)
            # a weight pruned to zero stays exactly zero through the fold (x scale), so CSR keeps the ticket's mask
            indptr, indices, data = _csr(w2d)
            tensors[f"{key}.indptr"], tensors[f"{key}.indices"], tensors[f"{key}.data"] = indptr, indices, data
            tensors[f"{key}.bias"] = nd.bias.astype(np.float32)
            spec["weight"] = {"indptr": f"{key}.indptr", "indices": f"{key}.indices", "data": f"{key}.data"}
            spec["bias"] = f"{key}.bias"
            spec["nnz"] = int(len(data))
            spec["density"] = float(len(data) / max(1, w2d.size))
            spec["kernel"] = {"1": "csr"}
        elif nd.op == "affine":
            tensors[f"{key}.scale"] = nd.weight.astype(np.float32)
            tensors[f"{key}.shift"] = nd.bias.astype(np.float32)
            spec["scale"], spec["shift"] = f"{key}.scale", f"{key}.shift"
        ops.append(spec)
    graph = {"format": FILE_FORMAT, "version": FORMAT_VERSION, "model": name, "input_shape": list(input_shape),
             "output": output, "ops": ops}
    return graph, tensors
