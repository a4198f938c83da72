import pickle

import numpy as np
import pytest
import torch

from gemdeploy.data import load_data
from gemdeploy.errors import GemdeployError


def write_cifar_python(root, n=20, seed=0):
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    written = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        labels = rng.integers(0, 10, n).tolist()
        with open(folder / name, "wb") as f:
            pickle.dump({b"data": data, b"labels": labels}, f)
        written[name] = (data, labels)
    return written


def test_cifar_loader_reads_a_cifar_format_folder(tmp_path):
    written = write_cifar_python(tmp_path)
    data = load_data("cifar10", tmp_path)
    assert data.input_shape == (3, 32, 32) and data.num_classes == 10
    assert len(data.train) + len(data.val) == 100 and len(data.test) == 20
    # The test split is read in order, pixel for pixel (CHW layout of the flat 3072-byte rows).
    want = torch.from_numpy(written["test_batch"][0].reshape(-1, 3, 32, 32))
    assert torch.equal(data.test.images, want)
    assert data.test.labels.tolist() == written["test_batch"][1]
    x, y = next(data.train.batches(16, train=True, epoch=0))
    assert x.shape == (16, 3, 32, 32) and x.dtype == torch.float32


def test_cifar_reader_refuses_a_pickle_that_would_run_code(tmp_path):
    write_cifar_python(tmp_path)

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    with open(tmp_path / "cifar-10-batches-py" / "data_batch_1", "wb") as f:
        pickle.dump({b"data": Evil(), b"labels": []}, f)
    with pytest.raises(GemdeployError, match="unsafe"):
        load_data("cifar10", tmp_path)


def test_cifar_binary_format(tmp_path):
    folder = tmp_path / "cifar-10-batches-bin"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]:
        rec = rng.integers(0, 256, (10, 3073), dtype=np.uint8)
        rec[:, 0] %= 10
        rec.tofile(folder / name)
    data = load_data("cifar10", tmp_path)
    assert len(data.test) == 10 and int(data.test.labels.max()) < 10


def test_augmentation_crops_and_flips_per_image_deterministically(tmp_path):
    write_cifar_python(tmp_path)
    data = load_data("cifar10", tmp_path)
    a = next(data.train.batches(32, train=True, epoch=2, seed=1))[0]
    b = next(data.train.batches(32, train=True, epoch=2, seed=1))[0]
    c = next(data.train.batches(32, train=True, epoch=3, seed=1))[0]
    assert torch.equal(a, b) and not torch.equal(a, c)
    plain = next(data.train.batches(32, train=False))[0]
    assert not torch.equal(next(data.train.batches(32, train=True, epoch=0))[0], plain)


def test_offline_digit_sets_have_fixed_splits():
    m = load_data("mnist5k")
    assert (len(m.train), len(m.val), len(m.test)) == (3500, 500, 1000)
    assert m.input_shape == (1, 28, 28)
    again = load_data("mnist5k")
    assert torch.equal(m.test.labels, again.test.labels)
    d = load_data("digits")
    assert d.input_shape == (1, 8, 8) and len(d.train) == 1200


def test_sharded_epochs_cover_every_example_once():
    m = load_data("digits")
    seen = torch.cat([m.train.order(epoch=1, train=True, seed=0, rank=r, world_size=2) for r in range(2)])
    assert set(seen.tolist()) == set(range(len(m.train)))


def test_imagefolder_reads_an_imagenet_style_folder(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in (("train", 12), ("val", 4)):
        for cls in ("cat", "dog"):
            folder = tmp_path / split / cls
            folder.mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    data = load_data("imagefolder", tmp_path)
    assert data.num_classes == 2 and data.input_shape == (3, 224, 224)
    assert len(data.test) == 8 and len(data.train) + len(data.val) == 24
    data.train.workers = data.test.workers = 0  # no worker processes inside the test runner
    x, y = next(data.train.batches(4, train=True))
    assert x.shape == (4, 3, 224, 224) and set(y.tolist()) <= {0, 1}
    seen = sum(len(y) for _, y in data.test.batches(3))
    assert seen == 8


def test_imagefolder_without_train_folder_is_a_clear_error(tmp_path):
    with pytest.raises(GemdeployError, match="train/ and val/"):
        load_data("imagefolder", tmp_path)
