"""The run directory: everything about one run, as JSON and safetensors, written atomically.

Layout (the user contract, DESIGN.md section 3):
    config.json          resolved configuration
    metrics.jsonl        one JSON record per epoch (phase, epoch, loss, accuracy, density, time)
    init.safetensors     weights at initialization
    mask.safetensors     the ticket (1 = kept)
    scores.safetensors   the method's final scores, where it has them (sanity: score inversion)
    weights.safetensors  fine-tuned weights (pruned entries exactly zero)
    checkpoint.*         the last per-epoch checkpoint of the phase in progress (for --resume)
    summary.json         the results
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from gemdeploy.errors import GemdeployError


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: str | Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n").encode())


def read_json(path: str | Path) -> Any:
    path = Path(path)
    if not path.is_file():
        raise GemdeployError(f"missing file {path}")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise GemdeployError(f"corrupt JSON file {path}: {exc}") from None


def save_tensors(path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, tmp, metadata=metadata)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_tensors(path: str | Path, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.is_file():
        raise GemdeployError(f"missing file {path}")
    try:
        return load_file(str(path), device=str(device))
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise GemdeployError(f"corrupt safetensors file {path}: {str(exc).splitlines()[0]}") from None


def load_metadata(path: str | Path) -> dict[str, str]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return f.metadata() or {}
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise GemdeployError(f"corrupt safetensors file {path}: {str(exc).splitlines()[0]}") from None


class RunDir:
    """A run directory on disk."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    @staticmethod
    def check_new(path: str | Path, *, overwrite: bool = False) -> None:
        """Raise unless a new run may be written to ``path`` (no side effects)."""
        path = Path(path)
        if path.exists() and (not path.is_dir() or any(path.iterdir())):
            if not overwrite:
                raise GemdeployError(f"{path} already exists; pass --resume to continue it or --overwrite to replace it")
            if not path.is_dir() or not (path / "config.json").is_file():
                # Only ever delete what looks like one of our run directories.
                raise GemdeployError(f"refusing to overwrite {path}: it is not a gemdeploy run directory")

    @classmethod
    def create(cls, path: str | Path, *, resume: bool = False, overwrite: bool = False) -> "RunDir":
        path = Path(path)
        if resume and overwrite:
            raise GemdeployError("--resume and --overwrite contradict each other; pick one")
        if resume:
            if not (path / "config.json").is_file():
                raise GemdeployError(f"nothing to resume in {path}: it has no config.json")
        else:
            cls.check_new(path, overwrite=overwrite)
            if path.exists() and overwrite:
                shutil.rmtree(path)
        path.mkdir(parents=True, exist_ok=True)
        return cls(path)

    @classmethod
    def open(cls, path: str | Path) -> "RunDir":
        path = Path(path)
        if not (path / "config.json").is_file():
            raise GemdeployError(f"{path} is not a gemdeploy run directory (no config.json)")
        return cls(path)

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    def has(self, name: str) -> bool:
        return (self.path / name).is_file()

    def write_json(self, name: str, obj: Any) -> None:
        write_json(self.path / name, obj)

    def read_json(self, name: str) -> Any:
        return read_json(self.path / name)

    def save_tensors(self, name: str, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
        save_tensors(self.path / name, tensors, metadata)

    def load_tensors(self, name: str, device="cpu") -> dict[str, torch.Tensor]:
        return load_tensors(self.path / name, device)

    # metrics.jsonl: appended per epoch; rewritten (atomically) when a resume rolls back to a checkpoint.
    def metrics(self) -> list[dict]:
        path = self.path / "metrics.jsonl"
        if not path.is_file():
            return []
        records = []
        for line in path.read_text().splitlines():
            if line.strip():
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError:
                    break  # a line cut short by an interruption: everything after it is suspect
        return records

    def append_metrics(self, record: dict) -> None:
        with open(self.path / "metrics.jsonl", "a") as f:
            f.write(json.dumps(record, default=float) + "\n")

    def truncate_metrics(self, count: int) -> None:
        kept = self.metrics()[:count]
        atomic_write_bytes(self.path / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in kept).encode())
