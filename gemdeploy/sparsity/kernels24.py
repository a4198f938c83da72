"""Which conv/linear layers can run on 2:4 sparse tensor-core kernels, and, from measured times, whether one pays.

The kernels are PyTorch's semi-structured sparse weights (``torch.sparse.to_sparse_semi_structured``: cuSPARSELt,
or CUTLASS where cuSPARSELt is missing). They multiply a 2-D sparse weight by a dense matrix, so every layer is
looked at as the GEMM it is:

- a Linear: weight ``[out, in]`` times one column per input row;
- a Conv2d: weight ``[K, R*S*C]`` (input channels *last*, so gemdeploy's 2:4 groups, which run along input channels
  at each kernel position, are 4 consecutive entries of a row) times one column per output position of the
  channels-last input patches (im2col; a 1x1 stride-1 conv needs no copy: it is a linear over channels).

Everything here is a pure function of shapes, weights and given timings (tested on the CPU with real models'
layers); the measuring lives in gemdeploy.bench.semi_structured.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

# The weight [rows, cols] must have both dimensions multiples of (and at least) these, per kernel library and
# dtype: torch.sparse's own shape tables (SparseSemiStructuredTensorCUSPARSELT / ...CUTLASS._DTYPE_SHAPE_CONSTRAINTS).
KERNEL_SHAPES: dict[str, dict[str, tuple[int, int]]] = {
    "cusparselt": {"fp16": (16, 16), "bf16": (16, 16), "int8": (32, 32)},
    "cutlass": {"fp16": (32, 64), "bf16": (32, 64), "fp32": (32, 32), "int8": (16, 128)},
}
# TensorRT's maintainers: sparse tactics pay mostly for layers of 256 or more input and output channels. Only a
# hint here: whether a layer goes sparse is decided by measuring it.
WIDE_CHANNELS = 256
# A layer goes sparse only when its sparse GEMM measured at least this much faster, so timing noise alone never
# swaps one.
MARGIN = 0.05


@dataclass(frozen=True)
class LayerGemm:
    """A conv/linear layer as a GEMM: ``rows`` x ``inner`` weight, ``positions`` columns per image."""

    name: str
    kind: str  # "Conv2d" | "Linear"
    out_channels: int
    in_channels: int
    kernel: tuple[int, int] = (1, 1)
    stride: tuple[int, int] = (1, 1)
    groups: int = 1
    dilation: tuple[int, int] = (1, 1)
    zero_padding: bool = True
    positions: int = 1  # output positions per image (Ho*Wo for a conv)

    @property
    def rows(self) -> int:
        return self.out_channels

    @property
    def inner(self) -> int:
        return self.in_channels // self.groups * self.kernel[0] * self.kernel[1]

    def columns(self, batch: int) -> int:
        return batch * self.positions

    def describe(self) -> str:
        """'3x3/2 conv 64->128 as GEMM [128, 576] x 3136 per image'."""
        if self.kind == "Linear":
            return f"linear {self.in_channels}->{self.out_channels}"
        k, s = "x".join(map(str, self.kernel)), self.stride[0]
        return f"{k}{'/' + str(s) if s != 1 else ''} conv {self.in_channels}->{self.out_channels}"


@torch.no_grad()
def layer_gemms(model: nn.Module, input_shape: tuple[int, ...]) -> list[LayerGemm]:
    """Every Conv2d and Linear of ``model`` as a GEMM, in execution order, from one forward pass of one input
    (zeros) on the model's device and dtype."""
    found: dict[str, LayerGemm] = {}
    hooks = []
    for name, mod in model.named_modules():
        if isinstance(mod, nn.Conv2d):
            def hook(m, inp, out, name=name):
                found.setdefault(name, LayerGemm(
                    name, "Conv2d", m.out_channels, m.in_channels, tuple(m.kernel_size), tuple(m.stride), m.groups,
                    tuple(m.dilation), m.padding_mode == "zeros" and not isinstance(m.padding, str),
                    out.shape[-1] * out.shape[-2]))
        elif isinstance(mod, nn.Linear):
            def hook(m, inp, out, name=name):
                found.setdefault(name, LayerGemm(name, "Linear", m.out_features, m.in_features,
                                                 positions=out.numel() // out.shape[0] // out.shape[-1]))
        else:
            continue
        hooks.append(mod.register_forward_hook(hook))
    param = next(model.parameters())
    was_training = model.training
    model.eval()
    try:
        model(torch.zeros(1, *input_shape, device=param.device, dtype=param.dtype))
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return list(found.values())


def weight_2d(weight: torch.Tensor) -> torch.Tensor:
    """[K, C, R, S] -> [K, R*S*C] (input channels last, contiguous); a Linear's [out, in] as it is."""
    if weight.dim() == 2:
        return weight.detach().contiguous()
    return weight.detach().permute(0, 2, 3, 1).reshape(weight.shape[0], -1).contiguous()


def holds_24(w2d: torch.Tensor) -> bool:
    """At most 2 nonzeros in every 4 consecutive entries of each row (the semi-structured layout)."""
    if w2d.dim() != 2 or w2d.shape[1] % 4:
        return False
    return bool(((w2d.reshape(w2d.shape[0], -1, 4) != 0).sum(-1) <= 2).all())


def kernel_blockers(g: LayerGemm, kernels: str = "cusparselt", dtype: str = "fp16") -> list[str]:
    """Why ``g`` can never run on the 2:4 kernels (empty when it can), from its shape alone."""
    why = []
    if g.groups != 1:
        why.append(f"grouped conv (groups={g.groups}): no 2:4 kernels for grouped or depthwise convolutions")
    if g.dilation != (1, 1):
        why.append("dilated conv: not lowered to one GEMM")
    if not g.zero_padding:
        why.append("padding mode is not zeros: not lowered to one GEMM")
    if g.in_channels % 4:
        why.append(f"{g.in_channels} input channels: 2:4 groups of 4 run along input channels")
    rows, cols = KERNEL_SHAPES[kernels].get(dtype, (None, None))
    if rows is None:
        why.append(f"{kernels} has no {dtype} 2:4 kernels")
    elif g.rows % rows or g.inner % cols or g.rows < rows or g.inner < cols:
        why.append(f"GEMM weight [{g.rows}, {g.inner}] is not a multiple of [{rows}, {cols}] ({kernels} {dtype})")
    return why


def can_benefit(gemms: list[LayerGemm], holds: dict[str, bool] | None = None, kernels: str = "cusparselt",
                dtype: str = "fp16", not_holding: str = "weights do not hold 2:4") -> list[dict]:
    """Per layer, from shapes (and, given ``holds``, whether its weights follow 2:4): ``verdict`` is ``never``
    (``why`` lists the blockers), ``narrow`` (runs sparse, but under WIDE_CHANNELS channels: rarely pays) or
    ``candidate`` (wide enough that it may pay; measuring decides)."""
    out = []
    for g in gemms:
        why = kernel_blockers(g, kernels, dtype)
        if holds is not None and not why and not holds.get(g.name, False):
            why.append(not_holding)
        if why:
            verdict = "never"
        elif min(g.in_channels, g.out_channels) < WIDE_CHANNELS:
            verdict = "narrow"
            why = [f"{min(g.in_channels, g.out_channels)} channels < {WIDE_CHANNELS}: 2:4 rarely pays"]
        else:
            verdict = "candidate"
        out.append({"layer": g.name, "type": g.kind, "shape": g.describe(), "gemm": [g.rows, g.inner],
                    "positions": g.positions, "verdict": verdict, "why": "; ".join(why)})
    return out


def benefit_line(rows: list[dict], kernels: str = "cusparselt", dtype: str = "fp16", names: int = 3) -> str:
    """One line for people: how many layers can ever run sparse, how many are wide enough to pay, which never."""
    count = {v: [r for r in rows if r["verdict"] == v] for v in ("candidate", "narrow", "never")}
    runnable = len(count["candidate"]) + len(count["narrow"])
    never = ", ".join(f"{r['layer']} ({r['why'].split(';')[0]})" for r in count["never"][:names])
    more = len(count["never"]) - names
    return (f"2:4 kernels ({kernels} {dtype}): {runnable} of {len(rows)} layers can run sparse, "
            f"{len(count['candidate'])} with >= {WIDE_CHANNELS} channels (where 2:4 tends to pay)"
            + (f"; never: {never}" + (f" and {more} more" if more > 0 else "") if never else ""))


def decide(dense_s: float, sparse_s: float, margin: float = MARGIN) -> tuple[bool, str]:
    """Use the sparse weight only when it measured at least ``margin`` faster than the dense layer."""
    speedup = dense_s / sparse_s if sparse_s > 0 else float("inf")
    times = f"sparse {sparse_s * 1e3:.4g} ms vs dense {dense_s * 1e3:.4g} ms ({speedup:.2f}x)"
    if sparse_s <= dense_s * (1 - margin):
        return True, f"faster: {times}"
    if sparse_s < dense_s:
        return False, f"within the {margin:.0%} margin: {times}"
    return False, f"slower: {times}"


def layer_verdict(g: LayerGemm, batch: int, dense_s: float | None = None, sparse_s: float | None = None,
                  blockers: list[str] | None = None, margin: float = MARGIN) -> dict:
    """One layer's 2:4 verdict at ``batch``: ``sparse`` (whether it runs on the sparse weight) and ``why``."""
    row = {"layer": g.name, "type": g.kind, "shape": g.describe(), "gemm": [g.rows, g.inner],
           "columns": g.columns(batch), "dense_ms": None if dense_s is None else dense_s * 1e3,
           "sparse_ms": None if sparse_s is None else sparse_s * 1e3, "speedup": None, "sparse": False}
    if blockers:
        return {**row, "why": "; ".join(blockers)}
    if dense_s is None or sparse_s is None:
        return {**row, "why": "not measured"}
    row["speedup"] = dense_s / sparse_s if sparse_s > 0 else None
    row["sparse"], row["why"] = decide(dense_s, sparse_s, margin)
    return row


def verdict_line(verdicts: list[dict], batch: int) -> str:
    """'batch 64: 12 of 53 layers on 2:4 weights (each >= 5% faster); 30 slower sparse, 11 cannot run sparse'."""
    sparse = [v for v in verdicts if v["sparse"]]
    measured = [v for v in verdicts if not v["sparse"] and v["sparse_ms"] is not None]
    never = len(verdicts) - len(sparse) - len(measured)
    gain = sum(v["dense_ms"] - v["sparse_ms"] for v in sparse)
    return (f"batch {batch}: {len(sparse)} of {len(verdicts)} layers on 2:4 weights"
            + (f" (saving {gain:.3g} ms of layer time)" if sparse else "")
            + f"; {len(measured)} measured no faster sparse (>= {MARGIN:.0%} needed), {never} cannot run sparse")


def model_benefit(model: nn.Module, input_shape: tuple[int, ...], holds: dict[str, bool] | None = None,
                  kernels: str = "cusparselt", dtype: str = "fp16", not_holding: str = "weights do not hold 2:4") -> dict:
    """What `gemdeploy export` and `mine --pattern 2:4` say up front: per layer whether 2:4 kernels can ever run it
    (``holds``: which layers carry, or will carry, the pattern; None: shapes only), and the one line for people."""
    try:
        rows = can_benefit(layer_gemms(model, input_shape), holds, kernels, dtype, not_holding)
    except Exception as exc:  # noqa: BLE001 - a model that cannot run one zero image: say so, never fail the command
        return {"kernels": kernels, "dtype": dtype, "can_run": None, "wide": None, "layers": [],
                "line": f"2:4 kernels: not determined (one forward pass to read the layer shapes failed: "
                        f"{type(exc).__name__}: {str(exc)[:120]})"}
    return {"kernels": kernels, "dtype": dtype, "line": benefit_line(rows, kernels, dtype),
            "can_run": sum(r["verdict"] != "never" for r in rows), "wide": sum(r["verdict"] == "candidate" for r in rows),
            "layers": rows}


def holds_per_layer(model: nn.Module) -> dict[str, bool]:
    """Layer name -> whether its weight holds 2:4 in the semi-structured layout."""
    return {name: holds_24(weight_2d(m.weight)) for name, m in model.named_modules()
            if isinstance(m, (nn.Conv2d, nn.Linear))}
