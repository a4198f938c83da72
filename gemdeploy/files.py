"""Files on disk, below every other layer: sha256 of files and state dicts, atomic writes (temp file + rename,
the user's permissions), JSON read with one-line errors and checked for shape, safetensors tensors and metadata.
No gemdeploy module but errors is imported here, and torch / safetensors only when tensors are touched."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gemdeploy.errors import GemdeployError

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


def state_sha256(state) -> str:
    """sha256 of a state dict's safetensors encoding (weights given to gemdeploy.api rather than as a file)."""
    import hashlib

    from safetensors.torch import save

    return hashlib.sha256(save({k: v.detach().contiguous().cpu() for k, v in state.items()})).hexdigest()


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
