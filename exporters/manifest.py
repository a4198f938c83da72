"""Which artifacts a run's export holds, as its record (RUN/export/export.json) lists them: the one answer bench
and every other reader get, instead of rebuilding file names from rules. export.json is rebuilt from the sidecars
of the files in place (gemdeploy.exporters.pipeline), so it never names a file made from other weights."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from gemdeploy.exporters import layout
from gemdeploy.exporters.precisions import PRECISIONS
from gemdeploy.files import read_json


@dataclass(frozen=True)
class ExportManifest:
    folder: Path  # RUN/export
    record: dict  # export.json ({} before the first export)

    @classmethod
    def of(cls, run_path: str | Path) -> "ExportManifest":
        folder = Path(run_path) / layout.EXPORT_DIR
        path = folder / layout.RECORD
        record = read_json(path) if path.is_file() else {}
        return cls(folder, record if isinstance(record, dict) else {})

    def _present(self, name: object) -> Path | None:
        if not isinstance(name, str) or not name or Path(name).name != name:
            return None  # only plain names inside RUN/export/ count
        path = self.folder / name
        return path if path.is_file() else None

    def precisions(self) -> list[str]:
        """The exported precisions whose file is in place, in the order export.json lists them."""
        listed = self.record.get("artifacts") or {}
        return [p for p in listed if p in PRECISIONS.names() and self._present(listed[p])]

    def file(self, key: str) -> Path | None:
        """The artifact listed under ``key`` (a precision, or "sparse" for the sparse-storage ONNX), if present."""
        return self._present((self.record.get("artifacts") or {}).get(key))

    def engine(self, precision: str) -> Path | None:
        """The TensorRT engine of ``precision`` that `export --trt` built, if present."""
        engines = (self.record.get("tensorrt") or {}).get("engines") or {}
        return self._present(engines.get(precision))

    def sidecar(self, artifact: Path) -> Path:
        """The JSON written next to an artifact (its checks, a TensorRT engine's batch profile)."""
        return artifact.parent / layout.sidecar(artifact.name)
