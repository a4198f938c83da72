"""Splits and bundles: how a data set lives on the device and is served in deterministic batches.

Small data sets (the offline digits, CIFAR, synthetic) live on the training device as uint8 tensors and
are augmented in whole batches there, so an epoch never waits on Python workers. Folder data sets at
ImageNet scale stream through a DataLoader with workers instead. Every split is deterministic: the
order and augmentation of an epoch come from a generator seeded by (seed, epoch), which is what makes
``--resume`` land on the same ticket and lets data-parallel ranks agree on the shuffle.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Protocol

import numpy as np
import torch

from gemdeploy.errors import GemdeployError

Batch = tuple[torch.Tensor, torch.Tensor]


def epoch_generator(seed: int, epoch: int, salt: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed((seed * 1_000_003 + epoch * 7919 + salt) % (2**63))


class Split(Protocol):
    def __len__(self) -> int: ...

    def batches(self, batch_size: int, *, epoch: int = 0, train: bool = False, seed: int = 0,
                rank: int = 0, world_size: int = 1, drop_last: bool = False) -> Iterator[Batch]: ...


@dataclass
class TensorSplit:
    """Images as uint8 [N, C, H, W] (or, with ``normalize=False``, float images used as they are) and int64 labels,
    kept on the device."""

    images: torch.Tensor
    labels: torch.Tensor
    mean: torch.Tensor
    std: torch.Tensor
    crop_padding: int = 0  # random crop with this padding when training (CIFAR: 4)
    flip: bool = False  # random horizontal flip when training
    channels_last: bool = False
    virtual_length: int | None = None  # synthetic data: a small pool stands in for a large split
    normalize: bool = True  # False: float images the user gave, fed to the model exactly as they are

    def __len__(self) -> int:
        return self.virtual_length or len(self.labels)

    def to(self, device: torch.device, channels_last: bool = False) -> "TensorSplit":
        return TensorSplit(self.images.to(device), self.labels.to(device), self.mean.to(device), self.std.to(device),
                           self.crop_padding, self.flip, channels_last, self.virtual_length, self.normalize)

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
        x = (x.float().div_(255.0) - self.mean) / self.std if self.normalize else x.float()
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x


@dataclass
class LoaderSplit:
    """A torchvision-style data set streamed through a DataLoader (ImageNet-scale folders)."""

    dataset: object
    # decoding workers: up to 4, never more than the cores this process may use (more only thrash)
    workers: int = field(default_factory=lambda: min(4, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                                                     else os.cpu_count() or 1))
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
