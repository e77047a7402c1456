"""ISS-grayscale (Liu et al. 2023, "Image Shortcut Squeezing"): train on grey images.

Colour-only perturbations (class-wise colour shifts, colour-channel patterns) vanish
when the three channels are collapsed to luma. A data defense: each training image
becomes ITU-R 601 luma, computed exactly as Pillow's ``convert("L")`` (fixed-point
weights 0.299, 0.587, 0.114, rounded), and is written back to all three channels so the
victim's input shape is unchanged (as ISS does). The clean test set stays in colour.
One-channel data is already grey: the defense leaves it unchanged. Spec ``grayscale``.
"""

from __future__ import annotations

import numpy as np

from ..data.dataset import ImageDataset
from .base import Defense, register_defense


def luma(images: np.ndarray) -> np.ndarray:
    """uint8 (N, H, W, 3) -> uint8 (N, H, W) luma, bit-exact with Pillow's RGB -> L."""
    rgb = images.astype(np.int32)
    return ((rgb[..., 0] * 19595 + rgb[..., 1] * 38470 + rgb[..., 2] * 7471 + 0x8000) >> 16).astype(np.uint8)


@register_defense
class Grayscale(Defense):
    name, kind = "grayscale", "data"

    def apply(self, train: ImageDataset, *, seed: int = 0, device=None) -> ImageDataset:
        if train.channels == 1:
            return train
        grey = np.repeat(luma(train.images)[..., None], 3, axis=-1)
        return train.with_images(grey)
