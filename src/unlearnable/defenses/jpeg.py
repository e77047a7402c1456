"""ISS-JPEG (Liu et al. 2023, "Image Shortcut Squeezing"): JPEG-compress the training set.

Low-quality JPEG quantises away the high-frequency content where most unlearnable
perturbations live. A data defense: every training image goes through a real JPEG
encode/decode round trip (Pillow/libjpeg, its default 4:2:0 chroma subsampling for colour)
once, before training. Quality: the paper studies 6-30 (MI-UE Table 11: 6, 8, 10, 12, 15,
20, 30); default 10, ISS's main setting. Spec ``jpeg`` or ``jpeg:Q`` (1-95).

Images are compressed one by one (JPEG is per image: 8x8 blocks and edge padding do not
cross image borders), in contiguous chunks spread over a thread pool of
``torch.get_num_threads()`` workers; libjpeg releases the GIL while it codes.
"""

from __future__ import annotations

import io
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from PIL import Image

from ..data.dataset import ImageDataset
from .base import Defense, SpecArg, register_defense


def jpeg_round_trip(images: np.ndarray, quality: int, workers: int | None = None) -> np.ndarray:
    """uint8 (N, H, W, C) with C in {1, 3} -> the same images after JPEG at ``quality``."""
    grey = images.shape[-1] == 1
    out = np.empty_like(images)

    def code(lo: int, hi: int) -> None:
        for i in range(lo, hi):
            buf = io.BytesIO()
            Image.fromarray(images[i, :, :, 0] if grey else images[i], "L" if grey else "RGB").save(
                buf, format="JPEG", quality=quality)
            buf.seek(0)
            with Image.open(buf) as im:
                decoded = np.asarray(im.convert("L" if grey else "RGB"))
            out[i] = decoded[..., None] if grey else decoded

    n = len(images)
    workers = max(1, workers or torch.get_num_threads())
    bounds = np.linspace(0, n, min(n, 4 * workers) + 1).astype(int) if n else np.array([0])
    with ThreadPoolExecutor(max_workers=workers) as pool:
        list(pool.map(lambda ab: code(*ab), zip(bounds[:-1], bounds[1:])))
    return out


@register_defense
class JPEG(Defense):
    name, kind = "jpeg", "data"
    arg = SpecArg("quality", int, 1, 95)

    def __init__(self, quality: int = 10):
        self.quality = quality

    def apply(self, train: ImageDataset, *, seed: int = 0, device=None) -> ImageDataset:
        return train.with_images(jpeg_round_trip(train.images, self.quality))
