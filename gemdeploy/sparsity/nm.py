"""N:M structured sparsity along the input-channel axis (the layout of TensorRT's SPARSE_WEIGHTS).

For a conv weight [K, C, R, S] the groups are M consecutive input channels C for each output channel k
and kernel position (r, s); for a Linear weight [out, in] they are M consecutive entries of in_features.
A weight satisfies N:M when every group holds at most N nonzeros (at least M - N zeros).
"""

from __future__ import annotations

import torch
from torch import nn

from gemdeploy.errors import GemdeployError
from gemdeploy.sparsity.masks import PRUNABLE_TYPES


def parse_nm(text: str) -> tuple[int, int]:
    try:
        n, m = (int(v) for v in text.split(":"))
    except ValueError:
        raise GemdeployError(f"--nm must look like N:M (e.g. 2:4), got {text!r}") from None
    if not (0 < n < m):
        raise GemdeployError(f"--nm needs 0 < N < M, got {text!r}")
    return n, m


def _grouped(t: torch.Tensor, m: int) -> torch.Tensor:
    """View ``t`` as [..., C // m, m] with the input-channel axis last, split in consecutive groups of m."""
    if t.dim() == 2:  # Linear [out, in]
        return t.reshape(t.shape[0], t.shape[1] // m, m)
    # Conv [K, C, R, S] -> [K, R, S, C] so consecutive input channels are contiguous.
    moved = t.permute(0, *range(2, t.dim()), 1)
    return moved.reshape(*moved.shape[:-1], t.shape[1] // m, m)


def _ungrouped(g: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    if len(shape) == 2:
        return g.reshape(shape)
    moved_shape = (shape[0], *shape[2:], shape[1])
    return g.reshape(moved_shape).permute(0, len(shape) - 1, *range(1, len(shape) - 1))


def nm_applicable(weight: torch.Tensor, m: int) -> bool:
    return weight.dim() in (2, 4) and weight.shape[1] % m == 0


def satisfies_nm(weight: torch.Tensor, n: int, m: int) -> bool:
    """Whether every group of ``m`` consecutive input channels holds at most ``n`` nonzeros."""
    if not nm_applicable(weight, m):
        return False
    return bool(((_grouped(weight, m) != 0).sum(-1) <= n).all())


def nm_mask_from_scores(scores: torch.Tensor, n: int, m: int, active: torch.Tensor | None = None) -> torch.Tensor:
    """0/1 mask keeping, in each group of ``m`` input channels, the ``n`` highest scores among ``active`` entries."""
    s = scores.detach().float()
    if active is not None:
        s = torch.where(active > 0, s, torch.full_like(s, -torch.inf))
    g = _grouped(s, m)
    top = g.topk(n, dim=-1).indices
    keep = torch.zeros_like(g).scatter_(-1, top, 1.0)
    if active is not None:
        keep = keep * _grouped((active > 0).float(), m)
    return _ungrouped(keep, scores.shape).contiguous()


def nm_layout(model: nn.Module, n: int, m: int) -> dict[str, bool]:
    """Every layer a sparse-weight kernel could take (ungrouped Conv2d and Linear whose input channels are a
    multiple of ``m``) -> whether its weight holds N:M (TensorRT's candidates, the first conv included)."""
    out = {}
    for name, mod in model.named_modules():
        if (isinstance(mod, nn.Conv2d) and mod.groups == 1 and mod.in_channels % m == 0) or \
                (isinstance(mod, nn.Linear) and mod.in_features % m == 0):
            out[name] = satisfies_nm(mod.weight.detach(), n, m)
    return out


def nm_eligible_layers(model: nn.Module, m: int) -> set[str]:
    """Names of the prunable weights that get the N:M pattern: ungrouped convs and Linears whose input channels
    are a multiple of M, except the first conv (its few input channels carry the whole image)."""
    names, first_seen = set(), False
    for name, mod in model.named_modules():
        if not isinstance(mod, PRUNABLE_TYPES):
            continue
        is_first = not first_seen
        first_seen = True
        if isinstance(mod, nn.Conv2d) and (mod.groups != 1 or is_first):
            continue
        if nm_applicable(mod.weight, m):
            names.add(f"{name}.weight")
    return names
