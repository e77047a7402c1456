"""Fashion-MNIST in its original idx (.gz) files: the embedded default data.

Debian's ``dataset-fashion-mnist`` puts them in /usr/share/datasets/fashion-mnist; the
location can be changed with ``UNLEARNABLE_FMNIST_DIR`` or an explicit path.
"""

from __future__ import annotations

import gzip
import os
import struct
import zlib
from pathlib import Path

import numpy as np

from ..errors import UnlearnableError
from .dataset import DataSplits, ImageDataset

DEFAULT_DIR = "/usr/share/datasets/fashion-mnist"
CLASS_NAMES = ["t-shirt/top", "trouser", "pullover", "dress", "coat",
               "sandal", "shirt", "sneaker", "bag", "ankle-boot"]
_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def default_dir() -> Path:
    return Path(os.environ.get("UNLEARNABLE_FMNIST_DIR") or DEFAULT_DIR)


def _read_bytes(path: Path) -> bytes:
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                return f.read()
        return path.read_bytes()
    except (OSError, EOFError, zlib.error) as e:
        raise UnlearnableError(f"cannot read {path}: {e}") from None


def read_idx(path: str | os.PathLike, expected_magic: int) -> np.ndarray:
    """Parse an idx file: big-endian magic (0x0000 08 ndim), ndim uint32 dims, uint8 data."""
    path = Path(path)
    raw = _read_bytes(path)
    if len(raw) < 8:
        raise UnlearnableError(f"{path}: bad idx header (file has {len(raw)} bytes)")
    magic = struct.unpack(">I", raw[:4])[0]
    if magic != expected_magic:
        raise UnlearnableError(f"{path}: bad idx header: magic {magic:#010x}, expected {expected_magic:#010x}")
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise UnlearnableError(f"{path}: bad idx header (truncated dimensions)")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    count = int(np.prod(dims))
    if len(raw) - header != count:
        raise UnlearnableError(
            f"{path}: idx data has {len(raw) - header} bytes but the header {dims} needs {count}")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims).copy()


def _find(root: Path, stem: str) -> Path:
    for name in (stem + ".gz", stem):
        if (root / name).is_file():
            return root / name
    raise UnlearnableError(
        f"Fashion-MNIST file {stem}[.gz] not found in {root} "
        f"(install Debian's dataset-fashion-mnist or set UNLEARNABLE_FMNIST_DIR)")


def load_fashion_mnist(root: str | os.PathLike | None = None) -> DataSplits:
    root = Path(root) if root else default_dir()
    if not root.is_dir():
        raise UnlearnableError(
            f"Fashion-MNIST directory not found: {root} "
            f"(install Debian's dataset-fashion-mnist or set UNLEARNABLE_FMNIST_DIR)")
    splits = {}
    for split, (img_stem, lab_stem) in _FILES.items():
        images = read_idx(_find(root, img_stem), 0x00000803)
        labels = read_idx(_find(root, lab_stem), 0x00000801)
        if images.ndim != 3 or labels.shape[0] != images.shape[0]:
            raise UnlearnableError(f"{root}: {split} images {images.shape} and labels {labels.shape} do not match")
        splits[split] = ImageDataset(images, labels, CLASS_NAMES, source=f"fashion-mnist:{split}")
    return DataSplits(splits["train"], splits["test"], name="fashion-mnist")
