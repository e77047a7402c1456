"""The reference set: the other classes that MI-UE contrasts the user's images with.

MI-UE's loss pulls same-class features together against other classes (paper Eq. 2), so
a folder with a single owner's photos needs other classes; this is the paper's one-class
setting (Appendix G.1: only class 0 of CIFAR-10 is perturbed, the other nine are clean).
The reference supplies them, and is never perturbed nor written.

``spec`` is any :func:`unlearnable.data.load_dataset` spec: ``fashion-mnist`` (the
embedded default), an ImageFolder tree, an ``.npz`` or a CIFAR folder; its training
split is used (a class-balanced subset of ``per_class`` images per class, seeded), its
test split (when present) by ``verify`` for the other-classes accuracy. Images are brought
to the working resolution by the same area resampling as the user's images, and to the
user's channels: grey references are replicated to RGB for colour photos (the surrogate
then also sees colour versus grey, which is an easy cue: a colour reference set, e.g.
other people's photos in an ImageFolder tree, is a better contrast), and colour references
are converted to grey luminance (BT.601, rounded) for grey images.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..data import ImageDataset, load_dataset
from ..data.dataset import fingerprint
from ..errors import UnlearnableError
from .resample import area_matrix


@dataclass
class Reference:
    spec: str
    train: ImageDataset  # at the working resolution, the spec's own channels
    test: ImageDataset | None
    per_class: int

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.train.images, self.train.labels, "\n".join(self.train.class_names))

    def images(self, channels: int, split: str = "train") -> np.ndarray:
        """uint8 (N, S, S, channels) of ``split``."""
        ds = self.train if split == "train" else self.test
        return to_channels(ds.images, channels)


def to_channels(images: np.ndarray, channels: int) -> np.ndarray:
    """uint8 NHWC with 1 or 3 channels -> ``channels`` (grey replicated, or BT.601 luma)."""
    have = images.shape[-1]
    if have == channels:
        return images
    if channels == 3:
        return np.repeat(images, 3, axis=-1)
    luma = images.astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    return np.clip(np.rint(luma), 0, 255).astype(np.uint8)[..., None]


def resize_batch(images: np.ndarray, size: int) -> np.ndarray:
    """uint8 (N, H, W, C) -> uint8 (N, S, S, C) by area averaging, rounded."""
    n, h, w, c = images.shape
    if (h, w) == (size, size):
        return images
    dh, dw = area_matrix(size, h), area_matrix(size, w)
    out = np.einsum("sh,nhwc,tw->nstc", dh, images.astype(np.float32), dw.astype(np.float32), optimize=True)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def load_reference(spec: str, *, size: int, per_class: int, seed: int, test_per_class: int | None = None) -> Reference:
    """The reference at ``size`` x ``size``: ``per_class`` training images per class (and, when
    ``test_per_class`` is given, that many test images per class)."""
    splits = load_dataset(spec)
    if splits.train.num_classes < 1 or len(splits.train) == 0:
        raise UnlearnableError(f"reference {spec}: no images")
    train = _subset(splits.train, per_class, seed)
    train = ImageDataset(resize_batch(train.images, size), train.labels, train.class_names, source=str(spec))
    test = None
    if test_per_class is not None and splits.test is not None:
        t = _subset(splits.test, test_per_class, seed)
        test = ImageDataset(resize_batch(t.images, size), t.labels, t.class_names, source=str(spec))
    return Reference(str(spec), train, test, per_class)


def _subset(ds: ImageDataset, per_class: int, seed: int) -> ImageDataset:
    present = int(np.unique(ds.labels).size)
    return ds.stratified_subset(per_class * present, seed=seed)
