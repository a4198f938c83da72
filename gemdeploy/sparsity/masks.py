"""Masks as values: parameter name -> 0/1 tensor, saved and loaded with safetensors.

Prunable weights are found from module types (every Conv2d and Linear weight, first and last layers
included), never from hand-written per-architecture lists.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from gemdeploy.files import load_tensors, save_tensors

PRUNABLE_TYPES = (nn.Conv2d, nn.Linear)


def prunable_weights(model: nn.Module) -> dict[str, nn.Parameter]:
    return {f"{name}.weight": m.weight for name, m in model.named_modules() if isinstance(m, PRUNABLE_TYPES)}


class Mask(dict):
    """name -> float tensor of 0s and 1s, one per prunable weight."""

    @classmethod
    def ones_like(cls, model: nn.Module) -> "Mask":
        return cls({k: torch.ones_like(w, dtype=torch.float32) for k, w in prunable_weights(model).items()})

    def num_kept(self) -> int:
        return int(sum(int(m.count_nonzero()) for m in self.values()))

    def num_total(self) -> int:
        return int(sum(m.numel() for m in self.values()))

    def density(self) -> float:
        return self.num_kept() / max(1, self.num_total())

    def sparsity(self) -> float:
        return 1.0 - self.density()

    def layer_densities(self) -> dict[str, float]:
        return {k: float(m.count_nonzero()) / m.numel() for k, m in self.items()}

    def to(self, device) -> "Mask":
        return Mask({k: v.to(device) for k, v in self.items()})

    def cpu(self) -> "Mask":
        return self.to("cpu")

    def apply_(self, model: nn.Module) -> None:
        """Zero the pruned weights of ``model`` in place."""
        weights = prunable_weights(model)
        with torch.no_grad():
            for k, m in self.items():
                weights[k].mul_(m.to(weights[k].device, weights[k].dtype))

    def check_matches(self, model: nn.Module) -> None:
        weights = prunable_weights(model)
        if set(weights) != set(self):
            raise ValueError(f"mask does not match the model: {sorted(set(weights) ^ set(self))[:3]}")
        for k, w in weights.items():
            if tuple(w.shape) != tuple(self[k].shape):
                raise ValueError(f"mask {k} has shape {tuple(self[k].shape)}, the weight {tuple(w.shape)}")

    def save(self, path: str | Path) -> None:
        save_tensors(path, {k: v.to(torch.uint8) for k, v in self.items()})

    @classmethod
    def load(cls, path: str | Path) -> "Mask":
        return cls({k: v.float() for k, v in load_tensors(path).items()})


def set_flat_(t: torch.Tensor, index: torch.Tensor, value: float = 1.0) -> torch.Tensor:
    """``t.flatten()[index] = value`` in place, whatever ``t``'s memory layout.

    ``index`` counts in the logical (row-major) order that ``flatten()`` and scores use. A channels_last tensor
    (every mask made ``*_like`` a CUDA conv weight) has no flat view, and ``reshape(-1)``/``flatten()`` would
    quietly write into a copy, so every write of flat positions into a mask goes through here."""
    if t.is_contiguous():
        t.view(-1)[index] = value
    else:
        flat = t.flatten()
        flat[index] = value
        t.copy_(flat.view(t.shape))
    return t


def keep_count(total: int, density: float) -> int:
    return max(1, int(round(total * density)))
