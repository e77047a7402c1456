"""The in-memory dataset type: uint8 images (N, H, W, C), int64 labels, class names."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np
import torch

from ..errors import UnlearnableError


def fingerprint(*parts) -> str:
    """The identity of data wherever it is stored (checkpoints, caches, manifests, provenance):
    SHA-256 over each part (an array's dtype, shape and C-order bytes; a string's UTF-8), the
    first 16 hex digits. One function, so that the same images have one name everywhere."""
    h = hashlib.sha256()
    for part in parts:
        if isinstance(part, str):
            h.update(b"str:" + part.encode())
        else:
            a = np.ascontiguousarray(part)
            h.update(f"{a.dtype.str}{a.shape}:".encode())
            h.update(a.tobytes())
    return h.hexdigest()[:16]


@dataclass
class ImageDataset:
    images: np.ndarray  # uint8, (N, H, W, C)
    labels: np.ndarray  # int64, (N,)
    class_names: list[str]
    source: str = ""  # where it came from (for manifests)
    indices: np.ndarray | None = field(default=None)  # positions in the source split, if a subset

    def __post_init__(self):
        images = np.asarray(self.images)
        if images.ndim == 3:  # NHW grey images
            images = images[..., None]
        if images.ndim != 4:
            raise UnlearnableError(f"{self.source or 'dataset'}: images must be (N, H, W[, C]), got shape {images.shape}")
        if images.dtype != np.uint8:
            raise UnlearnableError(f"{self.source or 'dataset'}: images must be uint8, got {images.dtype}")
        if images.shape[-1] not in (1, 3):
            raise UnlearnableError(f"{self.source or 'dataset'}: images must have 1 or 3 channels, got {images.shape[-1]}")
        labels = np.asarray(self.labels)
        if labels.ndim != 1 or labels.shape[0] != images.shape[0]:
            raise UnlearnableError(
                f"{self.source or 'dataset'}: {images.shape[0]} images but labels of shape {labels.shape}")
        if labels.size and not np.issubdtype(labels.dtype, np.integer):
            raise UnlearnableError(f"{self.source or 'dataset'}: labels must be integers, got {labels.dtype}")
        labels = labels.astype(np.int64)
        n_classes = len(self.class_names)
        if labels.size and (labels.min() < 0 or labels.max() >= n_classes):
            raise UnlearnableError(
                f"{self.source or 'dataset'}: labels out of range [0, {n_classes - 1}]: "
                f"found {int(labels.min())}..{int(labels.max())}")
        self.images = np.ascontiguousarray(images)
        self.labels = labels
        self.class_names = [str(c) for c in self.class_names]
        if self.indices is None:
            self.indices = np.arange(len(labels), dtype=np.int64)

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def channels(self) -> int:
        return int(self.images.shape[-1])

    @property
    def image_size(self) -> tuple[int, int]:
        return int(self.images.shape[1]), int(self.images.shape[2])

    def with_images(self, images: np.ndarray, *, source: str | None = None) -> "ImageDataset":
        """The same examples (labels, class names, positions) with other pixels, e.g. a
        defense's output; ``source`` names where the new pixels came from."""
        return ImageDataset(images, self.labels, list(self.class_names),
                            source=self.source if source is None else source, indices=self.indices)

    def take(self, idx: np.ndarray) -> "ImageDataset":
        idx = np.asarray(idx, dtype=np.int64)
        return ImageDataset(self.images[idx], self.labels[idx], list(self.class_names),
                            source=self.source, indices=self.indices[idx])

    def stratified_subset(self, n: int, seed: int = 0) -> "ImageDataset":
        """``n`` images with classes as balanced as the data allows, in source order."""
        idx = self.stratified_indices(n, seed)
        return self if len(idx) == len(self) else self.take(idx)

    def stratified_indices(self, n: int, seed: int = 0) -> np.ndarray:
        """The sorted indices :meth:`stratified_subset` takes (all of them when ``n >= len``)."""
        if n <= 0:
            raise UnlearnableError(f"subset size must be positive, got {n}")
        if n >= len(self):
            return np.arange(len(self))
        rng = np.random.default_rng(seed)
        per_class = [np.flatnonzero(self.labels == c) for c in range(self.num_classes)]
        per_class = [rng.permutation(ix) for ix in per_class if ix.size]
        # Round-robin over classes so that every class gets floor or ceil of n / C.
        chosen: list[int] = []
        depth = 0
        while len(chosen) < n:
            for ix in per_class:
                if depth < ix.size and len(chosen) < n:
                    chosen.append(int(ix[depth]))
            depth += 1
        return np.sort(np.asarray(chosen))

    def to_tensor(self, device="cpu") -> torch.Tensor:
        """float32 NCHW in [0, 1]."""
        x = torch.from_numpy(self.images).to(device)
        return x.permute(0, 3, 1, 2).float().div_(255.0).contiguous()


@dataclass
class DataSplits:
    train: ImageDataset
    test: ImageDataset | None
    name: str

    def check_compatible(self):
        if self.test is None:
            return
        if self.train.images.shape[1:] != self.test.images.shape[1:]:
            raise UnlearnableError(
                f"{self.name}: train images are {self.train.images.shape[1:]} but test images are "
                f"{self.test.images.shape[1:]}")
        if self.train.class_names != self.test.class_names:
            raise UnlearnableError(f"{self.name}: train and test class names differ")
