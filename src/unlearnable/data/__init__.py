"""Datasets as uint8 arrays + labels, their loaders, augmentations and the poisoned format."""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import UnlearnableError
from .cifar import download_cifar, is_cifar_dir, load_cifar
from .dataset import DataSplits, ImageDataset, fingerprint
from .fashion_mnist import load_fashion_mnist
from .imagefolder import load_image_folder
from .npz import load_npz_dataset
from .poisoned import PoisonedDataset, is_poisoned_dir, quantize, read_poisoned, write_poisoned

__all__ = ["DataSplits", "ImageDataset", "fingerprint", "PoisonedDataset", "load_dataset", "load_cifar",
           "load_fashion_mnist", "load_image_folder", "load_npz_dataset", "download_cifar",
           "read_poisoned", "write_poisoned", "quantize", "spec_path"]


def spec_path(spec: str | os.PathLike | None) -> Path | None:
    """The file or folder that the data spec ``spec`` reads (what an output must stay
    apart from), or None for the embedded default in its system location."""
    if spec is None or isinstance(spec, DataSplits):
        return None
    spec = str(spec)
    if spec == "fashion-mnist":
        return None
    return Path(spec.split(":", 1)[1]) if spec.startswith("fashion-mnist:") else Path(spec)


def load_dataset(spec: str | os.PathLike) -> DataSplits:
    """Load a dataset from a spec.

    ``fashion-mnist`` (or ``fashion-mnist:DIR``) is the embedded default; otherwise ``spec``
    is a path to a CIFAR-10/100 pickle folder, an ImageFolder tree, an ``.npz`` file or a
    protected dataset written by this package (its poisoned training images are loaded).
    """
    spec = str(spec)
    if spec == "fashion-mnist" or spec.startswith("fashion-mnist:"):
        return load_fashion_mnist(spec.split(":", 1)[1] if ":" in spec else None)
    path = Path(spec)
    if not path.exists():
        raise UnlearnableError(f"data path not found: {spec}")
    if path.is_file():
        if path.suffix == ".npz":
            return load_npz_dataset(path)
        raise UnlearnableError(f"{spec}: unsupported data file (expected .npz, or a folder)")
    if is_poisoned_dir(path):
        p = read_poisoned(path)
        return DataSplits(p.poisoned, p.test, name=f"poisoned:{path}")
    if is_cifar_dir(path):
        return load_cifar(path)
    return load_image_folder(path)
