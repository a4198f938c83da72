"""The run directory on disk: atomic writes, files checked for shape on read, only rank 0 writes.

Names live in gemdeploy.run.layout. A directory gemdeploy creates gets a marker file first; `--overwrite`
replaces only a directory that carries it, and even then removes only the entries gemdeploy writes
(layout.OWNED_FILES / OWNED_DIRS): a user's own files next to them stay.
"""

from __future__ import annotations

import datetime
import json
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gemdeploy.errors import GemdeployError
from gemdeploy.files import atomic_write_bytes, load_tensors, read_json, read_object, save_tensors, write_json
from gemdeploy.run import layout

if TYPE_CHECKING:
    import torch


def check_output_dir(path: str | Path, what: str = "output directory") -> Path:
    """Raise unless ``path`` can become a directory we write: not a file, and its nearest existing ancestor
    is a writable directory. No side effects."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise GemdeployError(f"{what} {path} is a file, not a directory")
    ancestor = path if path.exists() else path.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise GemdeployError(f"cannot create {what} {path}: {ancestor} is a file, not a directory")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise GemdeployError(f"cannot write {what} {path}: {ancestor} is not writable")
    return path


def is_gemdeploy_dir(path: Path) -> bool:
    """Whether ``path`` carries a marker gemdeploy wrote (a JSON object naming the tool)."""
    try:
        marker = json.loads((path / layout.MARKER).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(marker, dict) and marker.get("tool") == "gemdeploy"


def remove_owned(path: Path) -> list[str]:
    """Remove what gemdeploy writes in ``path`` (layout.OWNED_*), leave everything else; returns what stays."""
    kept = []
    for entry in path.iterdir():
        if entry.is_dir() and not entry.is_symlink():
            if layout.is_owned(entry.name, True):
                shutil.rmtree(entry)
                continue
        elif layout.is_owned(entry.name, False):
            entry.unlink()
            continue
        kept.append(entry.name)
    return kept


def sweep_debris(path: Path) -> list[str]:
    """Remove what an interrupted gemdeploy left behind in ``path``: temp files of atomic writes and staging
    folders, at the top and one level down (export/, imp-levels/, sanity/<check>/). Returns what went."""
    gone = []
    for folder in [path, *[p for p in path.iterdir() if p.is_dir()]] if path.is_dir() else []:
        for entry in folder.iterdir() if folder.is_dir() else []:
            if entry.is_file() and entry.name.startswith(".") and entry.name.endswith(".tmp"):
                entry.unlink(missing_ok=True)
                gone.append(str(entry.relative_to(path)))
            elif entry.is_dir() and entry.name.startswith(".staging-"):
                shutil.rmtree(entry, ignore_errors=True)
                gone.append(str(entry.relative_to(path)))
    return gone


def _is_main() -> bool:
    """Rank 0 of a data-parallel run, or the only process. torch.distributed is asked only where torch is already
    loaded, so `open` and `--help` stay instant (and the storage layer needs no training code)."""
    import sys

    dist = sys.modules.get("torch.distributed")
    return dist is None or not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


class RunDir:
    """A run directory on disk. Every write goes through here and happens on rank 0 only (a no-op on the other
    ranks of a data-parallel run), so no caller has to check its rank."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    @staticmethod
    def check_new(path: str | Path, *, overwrite: bool = False, what: str = "run directory") -> None:
        """Raise unless a new run may be written to ``path`` (no side effects)."""
        path = check_output_dir(path, what)
        if path.exists() and any(path.iterdir()):
            if not overwrite:
                raise GemdeployError(f"{path} already exists; pass --resume to continue it or --overwrite to replace it")
            if not is_gemdeploy_dir(path):
                raise GemdeployError(f"refusing to overwrite {path}: it was not created by gemdeploy "
                                     f"(no {layout.MARKER} marker); choose another --out")

    @classmethod
    def create(cls, path: str | Path, *, resume: bool = False, overwrite: bool = False,
               description: str = "run") -> "RunDir":
        """Open ``path`` for a new run (or a resumed one). On rank 0 only: with --overwrite, remove what an
        earlier gemdeploy run wrote there; write the marker; sweep an interrupted run's temp files."""
        path = Path(path)
        if resume and overwrite:
            raise GemdeployError("--resume and --overwrite contradict each other; pick one")
        run = cls(path)
        if resume:
            if not (path / layout.CONFIG).is_file():
                raise GemdeployError(f"nothing to resume in {path}: it has no {layout.CONFIG}")
            if _is_main():
                sweep_debris(path)
            return run
        if _is_main():  # the other ranks would see the directory rank 0 has just created
            cls.check_new(path, overwrite=overwrite)
            if path.exists() and overwrite:
                remove_owned(path)
            path.mkdir(parents=True, exist_ok=True)
            from gemdeploy import __version__

            write_json(path / layout.MARKER, {
                "tool": "gemdeploy", "version": __version__, "kind": description,
                "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")})
        return run

    @classmethod
    def open(cls, path: str | Path) -> "RunDir":
        path = Path(path)
        if not path.is_dir():
            why = "it is a file" if path.exists() else "it does not exist"
            raise GemdeployError(f"{path} is not a gemdeploy run directory ({why})")
        if not (path / layout.CONFIG).is_file():
            raise GemdeployError(f"{path} is not a gemdeploy run directory (no {layout.CONFIG})")
        return cls(path)

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    def sub(self, name: str) -> "RunDir":
        """A folder inside this run (sanity/<check>/, ...), written with the same rules."""
        return RunDir(self.path / name)

    def has(self, name: str) -> bool:
        return (self.path / name).is_file()

    # --- writes (rank 0 only) ------------------------------------------------------------------------
    def write_json(self, name: str, obj: Any) -> None:
        if _is_main():
            write_json(self.path / name, obj)

    def save_tensors(self, name: str, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
        if _is_main():
            save_tensors(self.path / name, tensors, metadata)

    def save_mask(self, name: str, mask: dict[str, torch.Tensor]) -> None:
        import torch

        self.save_tensors(name, {k: v.to(torch.uint8) for k, v in mask.items()})

    def copy_in(self, source: Path, name: str) -> None:
        if _is_main():
            data = Path(source).read_bytes()
            atomic_write_bytes(self.path / name, data)

    def remove(self, name: str) -> None:
        if _is_main():
            (self.path / name).unlink(missing_ok=True)

    def append_metrics(self, record: dict) -> None:
        if _is_main():
            self.path.mkdir(parents=True, exist_ok=True)
            with open(self.path / layout.METRICS, "a") as f:
                f.write(json.dumps(record, default=float) + "\n")

    def forget_metrics(self, drop) -> None:
        """Rewrite metrics.jsonl without the records for which ``drop(record)`` is true (a resume rolling back
        to its checkpoint forgets what the crashed attempt logged after it)."""
        if not _is_main():
            return
        records = self.metrics()
        kept = [r for r in records if not drop(r)]
        if len(kept) != len(records):
            atomic_write_bytes(self.path / layout.METRICS, "".join(json.dumps(r) + "\n" for r in kept).encode())

    # --- reads ---------------------------------------------------------------------------------------
    def read_json(self, name: str) -> Any:
        return read_json(self.path / name)

    def read_object(self, name: str, schema: dict[str, type | tuple[type, ...]]) -> dict:
        return read_object(self.path / name, schema)

    def load_tensors(self, name: str, device="cpu") -> dict[str, torch.Tensor]:
        return load_tensors(self.path / name, device)

    def metrics(self) -> list[dict]:
        path = self.path / layout.METRICS
        if not path.is_file():
            return []
        records = []
        for line in path.read_text().splitlines():
            if line.strip():
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    break  # a line cut short by an interruption: everything after it is suspect
                if isinstance(record, dict):
                    records.append(record)
        return records
