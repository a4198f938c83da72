"""Sparse safetensors: a tensor that is mostly zeros is stored as its nonzero values plus their positions,
so the file size tracks the nonzeros, not the dense shape. Loading gives back exactly the same tensors.

Positions are a packed bitmask (numel / 8 bytes) or int32 flat indices (4 bytes per nonzero), whichever is
smaller; tensors where neither saves space are stored dense. The layout is described in the file's metadata.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from gemdeploy.errors import GemdeployError
from gemdeploy.files import load_metadata, load_tensors, save_tensors

FORMAT = "gemdeploy-sparse-v1"


def encode(tensors: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    out, layout = {}, {}
    for name, t in tensors.items():
        t = t.detach().cpu().contiguous()
        if not t.is_floating_point() or t.numel() < 64:
            out[name] = t
            continue
        flat = t.flatten()
        nz = flat != 0
        nnz = int(nz.sum())
        dense_bytes = t.numel() * t.element_size()
        bitmask_bytes, index_bytes = (t.numel() + 7) // 8, 4 * nnz
        values_bytes = nnz * t.element_size()
        if values_bytes + min(bitmask_bytes, index_bytes) >= dense_bytes:
            out[name] = t
            continue
        out[f"{name}::values"] = flat[nz].clone()
        if bitmask_bytes <= index_bytes:
            out[f"{name}::bitmask"] = torch.from_numpy(np.packbits(nz.numpy().astype(np.uint8)))
            kind = "bitmask"
        else:
            out[f"{name}::indices"] = torch.nonzero(nz).flatten().to(torch.int32)
            kind = "indices"
        layout[name] = {"shape": list(t.shape), "positions": kind}
    return out, {"format": FORMAT, "sparse": json.dumps(layout)}


def decode(stored: dict[str, torch.Tensor], metadata: dict[str, str], source: str) -> dict[str, torch.Tensor]:
    if metadata.get("format") != FORMAT:
        raise GemdeployError(f"{source} is not a gemdeploy sparse weights file (format {metadata.get('format')!r})")
    layout = json.loads(metadata["sparse"])
    out = {k: v for k, v in stored.items() if "::" not in k}
    for name, info in layout.items():
        values = stored.get(f"{name}::values")
        positions = stored.get(f"{name}::{info['positions']}")
        if values is None or positions is None:
            raise GemdeployError(f"corrupt sparse weights file {source}: {name} is incomplete")
        numel = int(np.prod(info["shape"])) if info["shape"] else 1
        flat = torch.zeros(numel, dtype=values.dtype)
        if info["positions"] == "bitmask":
            nz = torch.from_numpy(np.unpackbits(positions.numpy(), count=numel).astype(bool))
            if int(nz.sum()) != values.numel():
                raise GemdeployError(f"corrupt sparse weights file {source}: {name} has mismatched positions")
            flat[nz] = values
        else:
            flat[positions.long()] = values
        out[name] = flat.reshape(info["shape"])
    return out


def save_sparse(path: str | Path, tensors: dict[str, torch.Tensor]) -> None:
    stored, metadata = encode(tensors)
    save_tensors(path, stored, metadata)


def load_sparse(path: str | Path) -> dict[str, torch.Tensor]:
    stored = load_tensors(path)
    try:
        return decode(stored, load_metadata(path), str(path))
    except (KeyError, ValueError, json.JSONDecodeError, RuntimeError, IndexError) as exc:
        raise GemdeployError(f"corrupt sparse weights file {path}: {exc}") from None
