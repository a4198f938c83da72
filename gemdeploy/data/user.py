"""A user's own data (`--data path/to/file.py:make_data`, `--data package.module:make_data`, or objects given to
gemdeploy.api) turned into a DataBundle with the built-in sets' train / val / test contract.

``make_data`` is called with no arguments, or with ``data_dir`` (the run's --data-dir) when its signature takes
it, and returns one of:

  * a dict ``{"train": ..., "val": ..., "test": ..., "num_classes": 10}`` (``val`` and ``num_classes`` optional;
    ``mean`` / ``std`` optional per-channel statistics for uint8 images);
  * a tuple ``(train, val, test)`` or ``(train, test)``;
  * a DataBundle.

Each split is either ``(images, labels)`` (torch tensors or numpy arrays: images [N, C, H, W] or [N, H, W],
labels integer [N]) or a torch Dataset whose items are ``(image tensor [C, H, W], label)``. uint8 images are
scaled to [0, 1] and normalized with the training split's per-channel mean and std, like the built-in sets;
float images are fed to the model exactly as given. Without ``val``, a fixed 10% of ``train`` (the same for
every seed) is held out. ``num_classes`` defaults to the largest label + 1 (or a Dataset's ``classes``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from gemdeploy import user_code
from gemdeploy.data.splits import DataBundle, LoaderSplit, TensorSplit
from gemdeploy.errors import GemdeployError

SPLITS = ("train", "val", "test")
_RETURNS = ("a dict with train, val (optional), test and num_classes (optional), a (train, val, test) or "
            "(train, test) tuple, or a DataBundle")


def load_user_data(value: str, data_dir: Path | None = None, sha256: str | None = None) -> DataBundle:
    spec = user_code.parse(value)
    if spec is None:
        raise ValueError(f"not a data spec: {value!r}")
    if spec.kind == "python":
        return to_bundle(user_code.live_object(spec, "data"), value)
    if spec.kind == "torchvision":
        raise GemdeployError(f"--data {value}: torchvision: names models; give data as FILE.py:FACTORY or "
                             "package.module:FACTORY")
    factory = user_code.load(value, "data", sha256)
    if not callable(factory):
        raise GemdeployError(f"{value} is a {type(factory).__name__}, not a function that returns the data")
    obj = user_code.call_factory(factory, value, "data", data_dir=data_dir)
    return to_bundle(obj, value)


def to_bundle(obj: Any, name: str) -> DataBundle:
    """A DataBundle from what a user's data factory (or gemdeploy.api's caller) returned."""
    if isinstance(obj, DataBundle):
        return obj
    extra: dict = {}
    if isinstance(obj, dict):
        unknown = set(obj) - {*SPLITS, "num_classes", "mean", "std"}
        if unknown:
            raise GemdeployError(f"the data {name} has unknown keys {sorted(unknown)}; it must be {_RETURNS}")
        missing = [k for k in ("train", "test") if obj.get(k) is None]
        if missing:
            raise GemdeployError(f"the data {name} has no {' or '.join(missing)} split; it must be {_RETURNS}")
        splits = {k: obj.get(k) for k in SPLITS}
        extra = {k: obj[k] for k in ("num_classes", "mean", "std") if obj.get(k) is not None}
    elif isinstance(obj, (tuple, list)) and len(obj) in (2, 3) and not _is_pair_of_arrays(obj):
        parts = list(obj)
        splits = dict(zip(SPLITS, parts)) if len(parts) == 3 else {"train": parts[0], "val": None, "test": parts[1]}
    else:
        raise GemdeployError(f"the data {name} is a {type(obj).__name__}; it must be {_RETURNS}")
    kinds = {k: ("dataset" if _is_dataset(v) else "tensors") for k, v in splits.items() if v is not None}
    if len(set(kinds.values())) > 1:
        raise GemdeployError(f"the data {name} mixes tensors and Dataset objects ({kinds}); give every split the "
                             "same way")
    if "dataset" in kinds.values():
        return _dataset_bundle(name, splits, extra)
    return _tensor_bundle(name, splits, extra)


def _is_dataset(v: Any) -> bool:
    return hasattr(v, "__getitem__") and hasattr(v, "__len__") and not isinstance(v, (tuple, list, dict, np.ndarray,
                                                                                      torch.Tensor))


def _is_pair_of_arrays(obj) -> bool:
    """``(images, labels)`` by mistake where the splits were expected."""
    return len(obj) == 2 and all(isinstance(v, (torch.Tensor, np.ndarray)) for v in obj)


def _as_tensor(v: Any, what: str) -> torch.Tensor:
    if isinstance(v, torch.Tensor):
        return v.detach().cpu()
    if isinstance(v, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(v))
    raise GemdeployError(f"{what} is a {type(v).__name__}; give a torch tensor or a numpy array")


def _pair(name: str, split: str, v: Any) -> tuple[torch.Tensor, torch.Tensor]:
    if not (isinstance(v, (tuple, list)) and len(v) == 2):
        raise GemdeployError(f"the {split} split of {name} must be (images, labels) or a torch Dataset, "
                             f"got a {type(v).__name__}")
    images = _as_tensor(v[0], f"the {split} images of {name}")
    labels = _as_tensor(v[1], f"the {split} labels of {name}")
    if images.dim() == 3:
        images = images[:, None]  # [N, H, W]: one channel
    if images.dim() != 4:
        raise GemdeployError(f"the {split} images of {name} have shape {tuple(images.shape)}; give [N, C, H, W] "
                             "(or [N, H, W] for one channel)")
    if images.dtype != torch.uint8 and not images.is_floating_point():
        raise GemdeployError(f"the {split} images of {name} are {images.dtype}; give uint8 (0-255, normalized like "
                             "the built-in sets) or float (used as given)")
    if labels.dim() != 1 or labels.is_floating_point() or labels.dtype == torch.bool:
        raise GemdeployError(f"the {split} labels of {name} must be a 1-D integer array, got {labels.dtype} "
                             f"{tuple(labels.shape)}")
    if len(labels) != len(images):
        raise GemdeployError(f"the {split} split of {name} has {len(images)} images but {len(labels)} labels")
    if len(labels) == 0:
        raise GemdeployError(f"the {split} split of {name} is empty")
    if int(labels.min()) < 0:
        raise GemdeployError(f"the {split} labels of {name} must be class indices >= 0, got {int(labels.min())}")
    return images, labels.long()


def _held_out(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(train indices, val indices): a fixed 10% of the training split (at least one), the same for every seed."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(0))
    n_val = max(1, n // 10)
    if n - n_val < 1:
        raise GemdeployError("the training split needs at least 2 examples to hold out a validation split")
    return perm[n_val:], perm[:n_val]


def _classes(name: str, labels: list[torch.Tensor], given: Any) -> int:
    top = max(int(t.max()) for t in labels) + 1
    if given is None:
        return top
    if not isinstance(given, int) or isinstance(given, bool) or given < 1:
        raise GemdeployError(f"num_classes of {name} must be a positive integer, got {given!r}")
    if top > given:
        raise GemdeployError(f"the data {name} has label {top - 1} but num_classes {given}")
    return given


def _stat(value: Any, channels: int, what: str, name: str) -> torch.Tensor:
    t = torch.as_tensor(value, dtype=torch.float32).flatten()
    if t.numel() == 1:
        t = t.repeat(channels)
    if t.numel() != channels or (what == "std" and bool((t <= 0).any())):
        raise GemdeployError(f"{what} of {name} must be {channels} per-channel value(s){' > 0' if what == 'std' else ''}")
    return t.view(1, -1, 1, 1)


def _tensor_bundle(name: str, splits: dict, extra: dict) -> DataBundle:
    pairs = {k: _pair(name, k, v) for k, v in splits.items() if v is not None}
    if "val" not in pairs:
        keep, held = _held_out(len(pairs["train"][1]))
        x, y = pairs["train"]
        pairs["train"], pairs["val"] = (x[keep], y[keep]), (x[held], y[held])
    shapes = {k: tuple(x.shape[1:]) for k, (x, _) in pairs.items()}
    if len(set(shapes.values())) > 1:
        raise GemdeployError(f"the splits of {name} have different image shapes: {shapes}")
    dtypes = {k: str(x.dtype) for k, (x, _) in pairs.items()}
    uint8 = {x.dtype == torch.uint8 for x, _ in pairs.values()}
    if len(uint8) > 1:
        raise GemdeployError(f"the splits of {name} mix uint8 and float images: {dtypes}")
    normalize = uint8.pop()
    channels = shapes["train"][0]
    train_x = pairs["train"][0]
    if normalize:
        x = train_x.float() / 255.0
        mean = _stat(extra["mean"], channels, "mean", name) if "mean" in extra else x.mean(dim=(0, 2, 3)).view(1, -1, 1, 1)
        std = (_stat(extra["std"], channels, "std", name) if "std" in extra
               else x.std(dim=(0, 2, 3)).nan_to_num(1.0).clamp_min(1e-3).view(1, -1, 1, 1))
    else:
        if "mean" in extra or "std" in extra:
            raise GemdeployError(f"mean/std of {name} apply to uint8 images; float images are used as given")
        if not all(bool(torch.isfinite(x).all()) for x, _ in pairs.values()):
            raise GemdeployError(f"the images of {name} hold NaN or infinite values")
        mean, std = torch.zeros(1, channels, 1, 1), torch.ones(1, channels, 1, 1)
    num_classes = _classes(name, [y for _, y in pairs.values()], extra.get("num_classes"))
    made = {k: TensorSplit(x if normalize else x.float(), y, mean, std, normalize=normalize)
            for k, (x, y) in pairs.items()}
    return DataBundle(name, tuple(int(v) for v in shapes["train"]), num_classes, made["train"], made["val"],
                      made["test"])


class _Items(torch.utils.data.Dataset):
    """A user's Dataset with its items checked and made (float32 image, int64 label)."""

    def __init__(self, dataset, name: str, split: str):
        self.dataset, self.name, self.split = dataset, name, split

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i):
        item = self.dataset[i]
        if not (isinstance(item, (tuple, list)) and len(item) >= 2):
            raise GemdeployError(f"the {self.split} Dataset of {self.name} must yield (image, label), got a "
                                 f"{type(item).__name__}")
        x, y = item[0], item[1]
        if isinstance(x, np.ndarray):
            x = torch.from_numpy(np.ascontiguousarray(x))
        if not isinstance(x, torch.Tensor):
            raise GemdeployError(f"the {self.split} Dataset of {self.name} yields a {type(x).__name__} image; it must "
                                 "be a tensor [C, H, W] (e.g. add torchvision.transforms.ToTensor())")
        return x.float(), int(y)


def _dataset_bundle(name: str, splits: dict, extra: dict) -> DataBundle:
    from torch.utils.data import Subset

    if "mean" in extra or "std" in extra:
        raise GemdeployError(f"mean/std of {name} apply to uint8 tensors; a Dataset normalizes its own images")
    sets = {k: v for k, v in splits.items() if v is not None}
    for k, v in sets.items():
        if len(v) == 0:
            raise GemdeployError(f"the {k} split of {name} is empty")
    if "val" not in sets:
        keep, held = _held_out(len(sets["train"]))
        sets["val"], sets["train"] = Subset(sets["train"], held.tolist()), Subset(sets["train"], keep.tolist())
    items = {k: _Items(v, name, k) for k, v in sets.items()}
    x, _ = items["train"][0]
    if x.dim() != 3:
        raise GemdeployError(f"the train Dataset of {name} yields images of shape {tuple(x.shape)}; give [C, H, W]")
    num_classes = extra.get("num_classes")
    if num_classes is None:
        classes = getattr(splits["train"], "classes", None)
        if classes is None:
            raise GemdeployError(f"the data {name} are Dataset objects: give num_classes (or a Dataset with a "
                                 "`classes` list)")
        num_classes = len(classes)
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1:
        raise GemdeployError(f"num_classes of {name} must be a positive integer, got {num_classes!r}")
    made = {k: LoaderSplit(v, workers=0) for k, v in items.items()}
    return DataBundle(name, tuple(int(v) for v in x.shape), num_classes, made["train"], made["val"], made["test"])
