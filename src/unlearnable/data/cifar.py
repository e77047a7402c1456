"""CIFAR-10/100 in the ``cifar-10-batches-py`` / ``cifar-100-python`` pickle layout.

The batches are Python pickles. Unpickling runs code named in the file, so they are read
with a restricted unpickler that admits only what the format needs (numpy array
reconstruction, dicts, lists, bytes, str, ints) and the result is checked field by field.
"""

from __future__ import annotations

import codecs
import hashlib
import io
import os
import pickle
import shutil
import tarfile
import tempfile
import urllib.request
from pathlib import Path

import numpy as np

from ..errors import UnlearnableError
from ..progress import bar, log
from .dataset import DataSplits, ImageDataset

# Official archives and their published MD5 sums.
ARCHIVES = {
    "cifar10": ("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
                "c58f30108f718f92721af3b95e74349a", "cifar-10-batches-py"),
    "cifar100": ("https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
                 "eb9058c3a382ffc7106e4002c42a8d85", "cifar-100-python"),
}


def _numpy_reconstruct():
    try:
        from numpy._core.multiarray import _reconstruct  # numpy >= 2
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core.multiarray import _reconstruct
    return _reconstruct


def _latin1_encode(text, encoding="latin1", errors="strict"):
    """``codecs.encode`` for the one encoding a protocol-2 pickle of bytes uses."""
    if codecs.lookup(encoding).name != "iso8859-1":
        raise pickle.UnpicklingError(f"_codecs.encode with encoding {encoding!r} is not allowed in a CIFAR batch")
    return codecs.encode(text, "latin1", errors)


#: The files of each layout that are read; nothing else in the folder is (a stray
#: ``data_batch_6`` or ``data_batch_1.bak`` is ignored).
CIFAR10_TRAIN = tuple(f"data_batch_{i}" for i in range(1, 6))


_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"): _numpy_reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _numpy_reconstruct,
    ("numpy", "ndarray"): lambda: np.ndarray,
    ("numpy", "dtype"): lambda: np.dtype,
    # Python 3 writes bytes in protocol-2 pickles as _codecs.encode(str, "latin1").
    ("_codecs", "encode"): lambda: _latin1_encode,
}


class RestrictedUnpickler(pickle.Unpickler):
    """Admits numpy's array reconstruction and builtin containers, nothing else."""

    def find_class(self, module, name):
        factory = _ALLOWED.get((module, name))
        if factory is None:
            raise pickle.UnpicklingError(f"global '{module}.{name}' is not allowed in a CIFAR batch")
        return factory()


def restricted_load(path: Path) -> dict:
    try:
        data = path.read_bytes()
    except OSError as e:
        raise UnlearnableError(f"cannot read {path}: {e}") from None
    try:
        obj = RestrictedUnpickler(io.BytesIO(data), encoding="bytes").load()
    except Exception as e:  # noqa: BLE001 - nothing but the admitted globals runs: any error means a bad file
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UnlearnableError(f"{path}: not a valid CIFAR pickle ({reason})") from None
    if not isinstance(obj, dict):
        raise UnlearnableError(f"{path}: CIFAR pickle must hold a dict, found {type(obj).__name__}")
    return {(k.decode("latin1") if isinstance(k, bytes) else k): v for k, v in obj.items()}


def _images(path: Path, batch: dict) -> np.ndarray:
    data = batch.get("data")
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        desc = f"{type(data).__name__} {getattr(data, 'dtype', '')} {getattr(data, 'shape', '')}".strip()
        raise UnlearnableError(f"{path}: 'data' must be a uint8 array of shape (N, 3072), found {desc}")
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)


def _labels(path: Path, batch: dict, key: str, n: int) -> np.ndarray:
    labels = batch.get(key)
    if isinstance(labels, np.ndarray) and labels.dtype.kind in "iu":
        labels = labels.tolist()
    if not isinstance(labels, list) or not all(type(v) is int for v in labels):
        raise UnlearnableError(f"{path}: '{key}' must be a list of ints, found {type(labels).__name__}")
    if len(labels) != n:
        raise UnlearnableError(f"{path}: {n} images but {len(labels)} labels")
    return np.asarray(labels, dtype=np.int64)


def _names(path: Path, meta: dict, key: str) -> list[str]:
    names = meta.get(key)
    if not isinstance(names, list) or not all(isinstance(v, (bytes, str)) for v in names):
        raise UnlearnableError(f"{path}: '{key}' must be a list of strings")
    return [v.decode() if isinstance(v, bytes) else v for v in names]


def is_cifar_dir(root: Path) -> bool:
    return (root / "data_batch_1").is_file() or ((root / "train").is_file() and (root / "meta").is_file())


def load_cifar(root: str | os.PathLike) -> DataSplits:
    """Load a CIFAR-10 (data_batch_1..5, test_batch, batches.meta) or CIFAR-100 (train, test, meta) folder."""
    root = Path(root)
    if (root / "data_batch_1").is_file():
        # Only the official names, in order: other files (data_batch_6, data_batch_1.bak) are not read.
        batches = [root / n for n in CIFAR10_TRAIN if (root / n).is_file()]
        names = _names(root / "batches.meta", restricted_load(root / "batches.meta"), "label_names") \
            if (root / "batches.meta").is_file() else [str(i) for i in range(10)]
        label_key, name = "labels", "cifar10"
        test_path = root / "test_batch"
    elif (root / "train").is_file():
        batches = [root / "train"]
        names = _names(root / "meta", restricted_load(root / "meta"), "fine_label_names")
        label_key, name = "fine_labels", "cifar100"
        test_path = root / "test"
    else:
        raise UnlearnableError(f"{root}: not a CIFAR directory (no data_batch_1 or train/meta files)")

    def read(paths):
        xs, ys = [], []
        for p in paths:
            b = restricted_load(p)
            x = _images(p, b)
            y = _labels(p, b, label_key, len(x))
            if y.size and (y.min() < 0 or y.max() >= len(names)):
                raise UnlearnableError(f"{p}: '{label_key}' out of range 0..{len(names) - 1}: "
                                       f"found {int(y.min())}..{int(y.max())}")
            xs.append(x)
            ys.append(y)
        return np.concatenate(xs), np.concatenate(ys)

    x_tr, y_tr = read(batches)
    if len(x_tr) == 0:
        raise UnlearnableError(f"{root}: no training images in {', '.join(p.name for p in batches)}")
    train = ImageDataset(x_tr, y_tr, names, source=f"{name}:{root}:train")
    test = None
    if test_path.is_file():
        x_te, y_te = read([test_path])
        test = ImageDataset(x_te, y_te, names, source=f"{name}:{root}:test")
    splits = DataSplits(train, test, name=name)
    splits.check_compatible()
    return splits


def md5sum(path: Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _safe_extract(tar: tarfile.TarFile, dest: Path) -> None:
    dest = dest.resolve()
    for m in tar.getmembers():
        target = (dest / m.name).resolve()
        if not (m.isfile() or m.isdir()) or (dest not in target.parents and target != dest):
            raise UnlearnableError(f"archive member {m.name!r} is not a plain file inside the archive folder")
    tar.extractall(dest)


def download_cifar(name: str, root: str | os.PathLike, url: str | None = None, md5: str | None = None) -> Path:
    """Download and unpack a CIFAR archive into ``root``; return the batches folder.

    The archive is checked against its MD5 before anything is unpacked; the folder
    appears only when complete (unpacked in a temporary folder, then renamed).
    """
    if name not in ARCHIVES:
        raise UnlearnableError(f"unknown CIFAR name {name!r}; choose from {sorted(ARCHIVES)}")
    default_url, default_md5, folder = ARCHIVES[name]
    url, md5 = url or default_url, md5 or default_md5
    root = Path(root)
    target = root / folder
    if target.is_dir() and is_cifar_dir(target):
        return target
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=root, prefix=".download-") as tmp:
        archive = Path(tmp) / "archive.tar.gz"
        try:
            with urllib.request.urlopen(url) as r, open(archive, "wb") as f:
                total = int(r.headers.get("Content-Length") or 0) or None
                with bar(total=total, desc=f"download {name}", unit="B") as pb:
                    for chunk in iter(lambda: r.read(1 << 20), b""):
                        f.write(chunk)
                        pb.update(len(chunk))
        except OSError as e:
            raise UnlearnableError(f"download of {url} failed: {e}") from None
        got = md5sum(archive)
        if got != md5:
            raise UnlearnableError(f"checksum mismatch for {url}: md5 {got}, expected {md5}")
        unpack = Path(tmp) / "unpacked"
        try:
            with tarfile.open(archive, "r:gz") as tar:
                _safe_extract(tar, unpack)
        except tarfile.TarError as e:
            raise UnlearnableError(f"{url}: not a valid tar.gz archive ({e})") from None
        if not (unpack / folder).is_dir():
            raise UnlearnableError(f"{url}: archive has no {folder}/ folder")
        if target.exists():
            shutil.rmtree(target)
        os.replace(unpack / folder, target)
    log(f"CIFAR data ready in {target}")
    return target
