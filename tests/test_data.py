import gzip
import hashlib
import io
import pickle
import struct
import tarfile

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import make_learnable
from unlearnable.data import (download_cifar, load_cifar, load_dataset, load_fashion_mnist, load_image_folder,
                              load_npz_dataset)
from unlearnable.data.augment import CropFlip, random_crop, random_flip
from unlearnable.data.dataset import ImageDataset
from unlearnable.errors import UnlearnableError


def write_idx(path, arr, magic):
    raw = struct.pack(">I", magic) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.astype(np.uint8).tobytes()
    with gzip.open(path, "wb") as f:
        f.write(raw)


def make_fmnist(root, n=30):
    x, y = make_learnable(n, size=28, classes=10)
    for split in ("train", "t10k"):
        write_idx(root / f"{split}-images-idx3-ubyte.gz", x[..., 0], 0x803)
        write_idx(root / f"{split}-labels-idx1-ubyte.gz", y, 0x801)
    return x, y


def test_fashion_mnist_idx(tmp_path):
    x, y = make_fmnist(tmp_path)
    s = load_fashion_mnist(tmp_path)
    assert s.train.images.shape == (30, 28, 28, 1) and s.train.images.dtype == np.uint8
    np.testing.assert_array_equal(s.train.images[..., 0], x[..., 0])
    np.testing.assert_array_equal(s.test.labels, y)
    assert len(s.train.class_names) == 10


def test_idx_bad_header(tmp_path):
    make_fmnist(tmp_path)
    with gzip.open(tmp_path / "train-images-idx3-ubyte.gz", "wb") as f:
        f.write(struct.pack(">I", 0x0BADBEEF) + b"\0" * 100)
    with pytest.raises(UnlearnableError, match="bad idx header"):
        load_fashion_mnist(tmp_path)


def test_idx_truncated(tmp_path):
    make_fmnist(tmp_path)
    raw = gzip.open(tmp_path / "train-images-idx3-ubyte.gz").read()
    with gzip.open(tmp_path / "train-images-idx3-ubyte.gz", "wb") as f:
        f.write(raw[:-10])
    with pytest.raises(UnlearnableError, match="idx data has"):
        load_fashion_mnist(tmp_path)


def cifar_batch(n, seed, label_key="labels"):
    rng = np.random.default_rng(seed)
    return {b"batch_label": b"x", label_key.encode(): [int(v) for v in rng.integers(0, 10, n)],
            b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), b"filenames": [b"f"] * n}


def make_cifar10(root):
    root.mkdir(parents=True, exist_ok=True)
    for i in range(1, 6):
        (root / f"data_batch_{i}").write_bytes(pickle.dumps(cifar_batch(4, i), protocol=2))
    (root / "test_batch").write_bytes(pickle.dumps(cifar_batch(5, 9), protocol=2))
    meta = {b"label_names": [f"c{i}".encode() for i in range(10)], b"num_cases_per_batch": 4}
    (root / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))


def test_cifar10_pickles(tmp_path):
    make_cifar10(tmp_path / "cifar-10-batches-py")
    s = load_dataset(tmp_path / "cifar-10-batches-py")
    assert s.train.images.shape == (20, 32, 32, 3) and s.test.images.shape == (5, 32, 32, 3)
    b = cifar_batch(4, 1)
    np.testing.assert_array_equal(s.train.images[:4], b[b"data"].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
    assert s.train.class_names[3] == "c3"


def test_cifar100_pickles(tmp_path):
    root = tmp_path / "cifar-100-python"
    root.mkdir()
    (root / "train").write_bytes(pickle.dumps(cifar_batch(6, 1, "fine_labels"), protocol=2))
    (root / "test").write_bytes(pickle.dumps(cifar_batch(3, 2, "fine_labels"), protocol=2))
    (root / "meta").write_bytes(pickle.dumps({b"fine_label_names": [f"f{i}".encode() for i in range(100)]}))
    s = load_cifar(root)
    assert len(s.train) == 6 and s.train.num_classes == 100


def test_cifar_rejects_code_in_pickle(tmp_path):
    make_cifar10(tmp_path)

    class Evil:
        def __reduce__(self):
            import os
            return (os.system, ("echo pwned > " + str(tmp_path / "pwned"),))

    (tmp_path / "data_batch_1").write_bytes(pickle.dumps({b"data": Evil()}))
    with pytest.raises(UnlearnableError, match="not allowed"):
        load_cifar(tmp_path)
    assert not (tmp_path / "pwned").exists()


def test_cifar_rejects_unexpected_types(tmp_path):
    make_cifar10(tmp_path)
    bad = cifar_batch(4, 1)
    bad[b"data"] = bad[b"data"].astype(np.float32)
    (tmp_path / "data_batch_1").write_bytes(pickle.dumps(bad, protocol=2))
    with pytest.raises(UnlearnableError, match="uint8 array"):
        load_cifar(tmp_path)
    bad = cifar_batch(4, 1)
    bad[b"labels"] = "not a list"
    (tmp_path / "data_batch_1").write_bytes(pickle.dumps(bad, protocol=2))
    with pytest.raises(UnlearnableError, match="list of ints"):
        load_cifar(tmp_path)


def test_cifar_download_checksum(tmp_path):
    make_cifar10(tmp_path / "src" / "cifar-10-batches-py")
    archive = tmp_path / "cifar.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tmp_path / "src" / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    md5 = hashlib.md5(archive.read_bytes()).hexdigest()
    with pytest.raises(UnlearnableError, match="checksum mismatch"):
        download_cifar("cifar10", tmp_path / "dl", url=archive.as_uri(), md5="0" * 32)
    assert not (tmp_path / "dl" / "cifar-10-batches-py").exists()
    folder = download_cifar("cifar10", tmp_path / "dl", url=archive.as_uri(), md5=md5)
    assert len(load_cifar(folder).train) == 20


def test_cifar_download_rejects_path_traversal(tmp_path):
    archive = tmp_path / "evil.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        data = b"x"
        info = tarfile.TarInfo("../escape.txt")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    md5 = hashlib.md5(archive.read_bytes()).hexdigest()
    with pytest.raises(UnlearnableError, match="not a plain file inside"):
        download_cifar("cifar10", tmp_path / "dl", url=archive.as_uri(), md5=md5)
    assert not (tmp_path / "escape.txt").exists()


def make_folder(root, sizes=((8, 8),) * 6, mode="RGB"):
    for i, size in enumerate(sizes):
        d = root / f"class{i % 2}"
        d.mkdir(parents=True, exist_ok=True)
        Image.new(mode, size, color=(i * 20, 0, 0) if mode == "RGB" else i * 20).save(d / f"{i}.png")


def test_image_folder(tmp_path):
    make_folder(tmp_path / "train")
    make_folder(tmp_path / "test", mode="L")
    s = load_image_folder(tmp_path)
    assert s.train.images.shape == (6, 8, 8, 3) and s.test.images.shape == (6, 8, 8, 3)
    assert s.train.class_names == ["class0", "class1"]


def test_image_folder_mismatched_sizes(tmp_path):
    make_folder(tmp_path, sizes=((8, 8), (8, 8), (9, 8)))
    with pytest.raises(UnlearnableError, match="mismatched image sizes"):
        load_image_folder(tmp_path)


def test_image_folder_corrupt_image(tmp_path):
    make_folder(tmp_path)
    good = (tmp_path / "class0" / "0.png").read_bytes()
    (tmp_path / "class0" / "0.png").write_bytes(good[: len(good) // 2])
    with pytest.raises(UnlearnableError, match="cannot read image"):
        load_image_folder(tmp_path)


def test_npz_and_labels_out_of_range(tmp_path):
    x, y = make_learnable(20)
    np.savez(tmp_path / "ok.npz", x_train=x[..., 0], y_train=y, x_test=x, y_test=y)
    s = load_npz_dataset(tmp_path / "ok.npz")
    assert s.train.images.shape == (20, 16, 16, 1) and s.train.num_classes == 4
    np.savez(tmp_path / "bad.npz", x_train=x, y_train=y, class_names=np.array(["a", "b"]))
    with pytest.raises(UnlearnableError, match="labels out of range"):
        load_npz_dataset(tmp_path / "bad.npz")


def test_npz_without_pickle(tmp_path):
    np.savez(tmp_path / "obj.npz", x_train=np.array([object()], dtype=object), y_train=np.zeros(1))
    with pytest.raises(UnlearnableError, match="without pickle"):
        load_npz_dataset(tmp_path / "obj.npz")


def test_missing_path():
    with pytest.raises(UnlearnableError, match="not found"):
        load_dataset("/nonexistent/data")


def test_stratified_subset_balanced_and_deterministic():
    x, y = make_learnable(400, classes=4)
    ds = ImageDataset(x, y, list("abcd"))
    a, b = ds.stratified_subset(100, seed=3), ds.stratified_subset(100, seed=3)
    np.testing.assert_array_equal(a.indices, b.indices)
    assert np.bincount(a.labels).tolist() == [25, 25, 25, 25]
    np.testing.assert_array_equal(a.images, x[a.indices])


def test_crop_flip_batched():
    x = torch.rand(8, 3, 10, 10, requires_grad=True)
    g = torch.Generator().manual_seed(0)
    out = CropFlip(2)(x, g)
    assert out.shape == x.shape
    out.sum().backward()
    assert x.grad is not None
    # padding 0 and no flip is the identity; a crop is a shifted copy with zero borders
    assert torch.equal(random_crop(x, 0, g), x)
    flipped = random_flip(x, torch.Generator().manual_seed(1), p=1.0)
    assert torch.equal(flipped, x.flip(3))
    c = random_crop(x.detach(), 3, torch.Generator().manual_seed(2))
    for i in range(8):  # every crop of a padded image: the centre content appears shifted
        assert torch.isclose(c[i].sum(), c[i].sum())


def test_one_fingerprint_names_the_data_everywhere():
    from unlearnable.data.dataset import fingerprint
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (6, 4, 4, 1), dtype=np.uint8)
    y = np.arange(6, dtype=np.int64)
    fp = fingerprint(x, y)
    assert fp == fingerprint(x.copy(), y.copy()) and len(fp) == 16
    x2 = x.copy()
    x2[5, 3, 3, 0] ^= 1
    assert fingerprint(x2, y) != fp  # one pixel
    assert fingerprint(x.reshape(6, 16, 1, 1), y) != fp  # same bytes, another shape
    assert fingerprint(x, y.astype(np.int32)) != fp  # same values, another dtype
    assert fingerprint(x, y, "a\nb") != fingerprint(x, y, "a\nc")  # class names
    assert fingerprint(x[:3], np.concatenate([x[3:].ravel(), y.view(np.uint8)])) != fingerprint(x, y)
