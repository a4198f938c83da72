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
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gemdeploy.errors import GemdeployError
from gemdeploy.run import layout

if TYPE_CHECKING:  # torch and safetensors load only when tensors are written or read: `open` stays instant
    import torch


def user_permissions(path: str | Path) -> None:
    """Give a file the permissions any other tool's file gets under the user's umask (mkstemp makes 0600)."""
    old = os.umask(0)
    os.umask(old)
    os.chmod(path, 0o666 & ~old)


def file_sha256(path: str | Path) -> str:
    """sha256 of a file's bytes, read in 1 MiB chunks (user files, weights and exported models)."""
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _publish(tmp: str | Path, path: Path) -> None:
    """Give a finished temp file the user's permissions, then move it into place atomically."""
    user_permissions(tmp)
    os.replace(tmp, path)


def _temp_beside(path: Path) -> str:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    return tmp


def _check_parent(path: Path) -> None:
    parent = path.parent
    if parent.exists() and not parent.is_dir():
        raise GemdeployError(f"cannot write {path}: {parent} is a file, not a directory")


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    path = Path(path)
    _check_parent(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_beside(path)
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        _publish(tmp, path)
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
    except OSError as exc:
        raise GemdeployError(f"cannot read {path}: {exc.strerror}") from None


_JSON_TYPES = {int: "an integer", float: "a number", str: "a string", bool: "true/false", list: "a list",
               dict: "an object", type(None): "null"}


def check_object(obj: Any, schema: dict[str, type | tuple[type, ...]], where: str) -> dict:
    """``obj`` as a JSON object holding at least ``schema``'s keys, each of one of the given types; one line
    naming ``where`` and the first problem otherwise."""
    if not isinstance(obj, dict):
        raise GemdeployError(f"{where} is not a JSON object (found {_JSON_TYPES.get(type(obj), type(obj).__name__)})")
    for key, types in schema.items():
        types = types if isinstance(types, tuple) else (types,)
        if float in types:
            types = (*types, int)
        if key not in obj:
            raise GemdeployError(f"{where} has no {key!r}")
        value = obj[key]
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
            want = " or ".join(_JSON_TYPES.get(t, t.__name__) for t in dict.fromkeys(types))
            raise GemdeployError(f"{where}: {key!r} should be {want}, found {json.dumps(value)[:40]}")
    return obj


def read_object(path: str | Path, schema: dict[str, type | tuple[type, ...]]) -> dict:
    """A JSON file that must hold an object with ``schema``'s keys and types."""
    return check_object(read_json(path), schema, str(path))


def save_tensors(path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    from safetensors.torch import save_file

    path = Path(path)
    _check_parent(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_beside(path)
    try:
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, tmp, metadata=metadata)
        _publish(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_tensors(path: str | Path, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise GemdeployError(f"missing file {path}")
    try:
        return load_file(str(path), device=str(device))
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise GemdeployError(f"corrupt safetensors file {path}: {str(exc).splitlines()[0]}") from None


def load_metadata(path: str | Path) -> dict[str, str]:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return f.metadata() or {}
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise GemdeployError(f"corrupt safetensors file {path}: {str(exc).splitlines()[0]}") from None


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
    from gemdeploy.train import distributed as dist

    return dist.is_main()


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
