"""Reading CIFAR-10/100 from disk without executing code.

The standard "python version" batches are pickles; a plain ``pickle.load`` (what torchvision does) can run
arbitrary code from a tampered file. This reader accepts only the handful of globals a genuine CIFAR batch
references (numpy arrays and dtypes). The binary version is read directly.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np

from gemdeploy.errors import GemdeployError

_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("_codecs", "encode"), ("builtins", "bytearray"),
}

LAYOUTS = {
    "cifar10": {"python": ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"], b"labels"),
                "binary": ("cifar-10-batches-bin", [f"data_batch_{i}.bin" for i in range(1, 6)], ["test_batch.bin"], 1)},
    "cifar100": {"python": ("cifar-100-python", ["train"], ["test"], b"fine_labels"),
                 "binary": ("cifar-100-binary", ["train.bin"], ["test.bin"], 2)},
}


class _SafeUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) in _ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a data file")


def _python_batch(path: Path, label_key: bytes) -> tuple[np.ndarray, np.ndarray]:
    try:
        with open(path, "rb") as f:
            batch = _SafeUnpickler(f, encoding="bytes").load()
        data = np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
        labels = np.asarray(batch[label_key], dtype=np.int64)
    except Exception as exc:  # noqa: BLE001 - a crafted file can raise anything (OverflowError, MemoryError, ...)
        raise GemdeployError(f"corrupt or unsafe CIFAR batch {path}: {type(exc).__name__}: "
                             f"{str(exc).splitlines()[0] if str(exc) else 'unreadable'}") from None
    if len(data) != len(labels):
        raise GemdeployError(f"corrupt CIFAR batch {path}: {len(data)} images but {len(labels)} labels")
    return data, labels


def _binary_batch(path: Path, label_bytes: int) -> tuple[np.ndarray, np.ndarray]:
    try:
        raw = np.fromfile(path, dtype=np.uint8)
    except (OSError, MemoryError, ValueError) as exc:
        raise GemdeployError(f"cannot read CIFAR binary batch {path}: {exc}") from None
    record = label_bytes + 3072
    if raw.size % record:
        raise GemdeployError(f"corrupt CIFAR binary batch {path}: size is not a multiple of {record} bytes")
    raw = raw.reshape(-1, record)
    return raw[:, label_bytes:].reshape(-1, 3, 32, 32), raw[:, label_bytes - 1].astype(np.int64)


def find_layout(root: Path, name: str) -> tuple[str, Path] | None:
    for kind, (folder, train, test, _) in LAYOUTS[name].items():
        for base in (root / folder, root):
            if all((base / f).is_file() for f in train + test):
                return kind, base
    return None


def read_cifar(root: Path, name: str) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """((train_images, train_labels), (test_images, test_labels)) as uint8 NCHW and int64."""
    found = find_layout(root, name)
    if found is None:
        folders = " or ".join(v[0] for v in LAYOUTS[name].values())
        raise GemdeployError(f"no {name} batches under {root} (expected {folders}; add --download to fetch them)")
    kind, base = found
    _, train, test, key = LAYOUTS[name][kind]
    read = _python_batch if kind == "python" else _binary_batch

    classes = 10 if name == "cifar10" else 100

    def load(files):
        parts = [read(base / f, key) for f in files]
        for f, (_, labels) in zip(files, parts):
            if len(labels) == 0 or labels.min() < 0 or labels.max() >= classes:
                raise GemdeployError(f"corrupt CIFAR batch {base / f}: labels must lie in 0..{classes - 1}")
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])

    return load(train), load(test)
