"""2:4 sparse weights where they measure faster: each conv/linear layer as the GEMM it is, timed dense and on
PyTorch's semi-structured sparse weight (cuSPARSELt / CUTLASS) at the batch asked for, swapped only where the
sparse one wins (gemdeploy.sparsity.kernels24 holds the rules and the decision).

Convolutions are lowered to one GEMM over channels-last patches (im2col), weight [K, R*S*C]: that is the only
layout in which gemdeploy's 2:4 groups (4 consecutive input channels at one kernel position) are 4 consecutive
entries of a weight row, as the sparse kernels need them, and one GEMM with the whole R*S*C reduction is the
largest GEMM the layer offers (sparse kernels pay on large ones). A 1x1 stride-1 conv needs no copy: channels-last
activations already are the [positions, C] matrix. A kxk conv copies R*S shifted views of its input; that copy is
part of the measured sparse time, so a layer whose im2col costs more than the sparse GEMM saves stays dense.

``sparsify`` is injectable: on CUDA it is ``torch.sparse.to_sparse_semi_structured``; the CPU has no sparse kernels,
so CPU tests and the benchmark's smoke run pass a dense stand-in and exercise everything but the sparse GEMM.
"""

from __future__ import annotations

import copy
import statistics
import time
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from gemdeploy.sparsity.kernels24 import (MARGIN, LayerGemm, holds_24, kernel_blockers, layer_gemms, layer_verdict,
                                          weight_2d)

Sparsify = Callable[[torch.Tensor], torch.Tensor]


def patches_nhwc(x: torch.Tensor, kernel: tuple[int, int], stride: tuple[int, int],
                 padding: tuple[int, int]) -> tuple[torch.Tensor, int, int]:
    """A conv's input patches as rows [B*Ho*Wo, R*S*C] in (r, s, c) order (channels-last im2col)."""
    r, s = kernel
    sh, sw = stride
    x = x.permute(0, 2, 3, 1)
    if padding[0] or padding[1]:
        x = F.pad(x, (0, 0, padding[1], padding[1], padding[0], padding[0]))
    b, hp, wp, _ = x.shape
    ho, wo = (hp - r) // sh + 1, (wp - s) // sw + 1
    if r == s == 1:
        cols = x[:, : sh * (ho - 1) + 1: sh, : sw * (wo - 1) + 1: sw, :]
    else:
        cols = torch.stack([x[:, i: i + sh * (ho - 1) + 1: sh, j: j + sw * (wo - 1) + 1: sw, :]
                            for i in range(r) for j in range(s)], dim=3)
    return cols.reshape(b * ho * wo, -1), ho, wo


class GemmLinear(nn.Module):
    """A Linear whose weight may be a semi-structured sparse tensor."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None):
        super().__init__()
        self.weight = nn.Parameter(weight, requires_grad=False)
        self.bias = None if bias is None else nn.Parameter(bias.detach(), requires_grad=False)

    def forward(self, x):
        return F.linear(x, self.weight, self.bias)


class ConvAsGemm(nn.Module):
    """A Conv2d (groups 1, dilation 1, zero padding) as one GEMM of its channels-last patches with a [K, R*S*C]
    weight, which may be a semi-structured sparse tensor. The output is NCHW in channels-last memory."""

    def __init__(self, conv: nn.Conv2d, weight2d: torch.Tensor):
        super().__init__()
        self.weight = nn.Parameter(weight2d, requires_grad=False)
        self.bias = None if conv.bias is None else nn.Parameter(conv.bias.detach(), requires_grad=False)
        self.kernel, self.stride, self.padding = tuple(conv.kernel_size), tuple(conv.stride), tuple(conv.padding)

    def forward(self, x):
        cols, ho, wo = patches_nhwc(x, self.kernel, self.stride, self.padding)
        y = F.linear(cols, self.weight, self.bias)
        return y.reshape(x.shape[0], ho, wo, -1).permute(0, 3, 1, 2)


def lowered(module: nn.Module, sparsify: Sparsify) -> nn.Module:
    """``module`` (Linear or lowerable Conv2d) as a GEMM on ``sparsify(weight_2d)``."""
    w2d = sparsify(weight_2d(module.weight))
    return GemmLinear(w2d, module.bias) if isinstance(module, nn.Linear) else ConvAsGemm(module, w2d)


def semi_structured_sparsify() -> Sparsify:
    from torch.sparse import to_sparse_semi_structured

    return to_sparse_semi_structured


def kernel_library() -> str:
    """Which library torch's semi-structured weights use here: cuSPARSELt, else CUTLASS."""
    try:
        return "cusparselt" if torch.backends.cusparselt.is_available() else "cutlass"
    except AttributeError:
        return "cutlass"


@torch.no_grad()
def layer_inputs(model: nn.Module, x: torch.Tensor, names: set[str]) -> dict[str, torch.Tensor]:
    """The input each named layer sees when ``model`` runs on ``x`` (one forward pass)."""
    seen: dict[str, torch.Tensor] = {}

    def keep(name: str):
        def hook(module, inp, out) -> None:  # returns None: the layer's output stays as it is
            seen.setdefault(name, inp[0])
        return hook

    hooks = [mod.register_forward_hook(keep(name)) for name, mod in model.named_modules() if name in names]
    try:
        model(x)
    finally:
        for h in hooks:
            h.remove()
    return seen


@torch.no_grad()
def time_call(module: nn.Module, x: torch.Tensor, iters: int = 20, warmup: int = 3) -> float:
    """Median seconds of ``module(x)``: on CUDA replayed from a CUDA graph (as the whole model runs, so launch
    overhead does not favour either side; eager when capture fails), on the CPU by wall clock."""
    if x.is_cuda:
        from gemdeploy.bench.backends.base import cuda_event_times
        from gemdeploy.bench.backends.cuda_graph import capture, cudnn_autotune

        with cudnn_autotune():  # the dense conv gets the kernel it gets inside the model's graph
            try:
                graph, _ = capture(module, x)
                fn = graph.replay
            except RuntimeError:
                fn = lambda: module(x)  # noqa: E731 - an op that cannot be captured: time it eagerly
            return statistics.median(cuda_event_times(fn, iters, warmup))
    for _ in range(warmup):
        module(x)
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        module(x)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:160] if text else ''}"


def _swap(model: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, attr = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, attr, new)


@torch.no_grad()
def choose_layers(model: nn.Module, x: torch.Tensor, sparsify: Sparsify, *, kernels: str = "cusparselt",
                  dtype: str = "fp16", measure: bool = True, margin: float = MARGIN, iters: int = 20,
                  warmup: int = 3) -> tuple[nn.Module, list[dict]]:
    """A copy of ``model`` in which each layer that can run on 2:4 kernels, holds 2:4 and measured at least
    ``margin`` faster sparse on its real input at ``x``'s batch runs on its sparse weight (every such layer, unmeasured,
    with ``measure=False``); and per layer the verdict with its reason (blockers, refusal or the two times)."""
    gemms = layer_gemms(model, tuple(x.shape[1:]))
    modules = dict(model.named_modules())
    blockers: dict[str, list[str]] = {}
    for g in gemms:
        why = kernel_blockers(g, kernels, dtype)
        if not why and not holds_24(weight_2d(modules[g.name].weight)):
            why = ["weights do not hold 2:4"]
        blockers[g.name] = why
    runnable = [g for g in gemms if not blockers[g.name]]
    inputs = layer_inputs(model, x, {g.name for g in runnable}) if measure else {}
    batch = x.shape[0]
    out, verdicts, chosen = copy.deepcopy(model), {}, {}
    for g in gemms:
        if blockers[g.name]:
            verdicts[g.name] = layer_verdict(g, batch, blockers=blockers[g.name])
            continue
        dense = modules[g.name]
        try:
            sparse = lowered(dense, sparsify)
            if not measure:
                chosen[g.name] = sparse
                verdicts[g.name] = {**layer_verdict(g, batch), "sparse": True, "why": "every runnable layer (unmeasured)"}
                continue
            inp = inputs[g.name]
            verdicts[g.name] = layer_verdict(g, batch, time_call(dense, inp, iters, warmup),
                                             time_call(sparse, inp, iters, warmup), margin=margin)
        except Exception as exc:  # noqa: BLE001 - torch refuses a shape/dtype at conversion or in the kernel
            verdicts[g.name] = layer_verdict(g, batch, blockers=[f"refused by torch: {_short(exc)}"])
            continue
        if verdicts[g.name]["sparse"]:
            chosen[g.name] = sparse
    for name, sparse in chosen.items():
        _swap(out, name, sparse)
    return out.eval(), [verdicts[g.name] for g in gemms]


def max_logit_difference(a: nn.Module, b: nn.Module, x: torch.Tensor) -> tuple[float, float]:
    """(max |a(x) - b(x)|, max |a(x)|): the swapped model checked against the one it came from."""
    with torch.no_grad():
        ya, yb = a(x).float(), b(x).float()
    return float((ya - yb).abs().max()), float(ya.abs().max())
