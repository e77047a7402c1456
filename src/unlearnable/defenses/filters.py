"""Cheap filters APBench runs against availability poisons: bit-depth reduction, Gaussian
blur and random noise.

* ``bdr:BITS`` (data): keep the top BITS bits of every channel value (posterize), as
  APBench does with ``RandomPosterize(bits=2, p=1)``; default 2. Perturbations smaller
  than one quantisation step (64 levels at 2 bits, against a budget of 8) mostly vanish,
  and so does most of the image's grey-level detail.
* ``blur:SIGMA`` (data): a Gaussian blur of standard deviation SIGMA pixels, reflect
  padding, rounded back to uint8. The kernel is 3 x 3 up to sigma 1, then
  ``2 * ceil(2 * sigma) + 1`` wide. Default 0.1, APBench's ``GaussianBlur(3, sigma=0.1)``:
  at that sigma the off-centre weights are ``exp(-50)``, so the default changes no pixel;
  it is kept because it is that benchmark's setting, and ``blur:1`` is a real blur.
* ``noise:STD`` (batch): fresh Gaussian noise of standard deviation STD/255 on every
  training batch, clamped to [0, 1]. APBench has no noise filter and no paper fixes one
  for this use; the default 8 matches the perturbation budget, so the noise is as large
  as the signal it is meant to drown.

All three are batched tensor work; bdr and blur run once over the training set in chunks
on the victim's device, noise inside the loop from the training generator (so a seeded
run repeats exactly).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from ..data.dataset import ImageDataset
from .base import Defense, SpecArg, register_defense

_CHUNK = 4096  # images per device chunk: bounds memory for 60,000-image sets


def reduce_bit_depth(images: np.ndarray, bits: int) -> np.ndarray:
    """uint8 images with only their top ``bits`` bits kept (the low bits zeroed)."""
    return images & np.uint8((0xFF << (8 - bits)) & 0xFF)


def gaussian_kernel(sigma: float) -> torch.Tensor:
    """The normalised 1-D Gaussian of ``sigma`` pixels, 3 taps up to sigma 1, wider after."""
    radius = 1 if sigma <= 1 else math.ceil(2 * sigma)
    t = torch.arange(-radius, radius + 1, dtype=torch.float64)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    return (k / k.sum()).float()


def gaussian_blur(images: np.ndarray, sigma: float, device=None) -> np.ndarray:
    """uint8 (N, H, W, C) blurred per channel (separable, reflect padding), rounded to uint8."""
    device = torch.device(device or "cpu")
    k = gaussian_kernel(sigma).to(device)
    r = (len(k) - 1) // 2
    n, h, w, c = images.shape
    out = np.empty_like(images)
    for lo in range(0, n, _CHUNK):
        x = torch.from_numpy(images[lo:lo + _CHUNK]).to(device).permute(0, 3, 1, 2).float()
        x = x.reshape(-1, 1, h, w)
        mode = "reflect" if min(h, w) > r else "replicate"  # reflect needs the pad below the side
        x = F.conv2d(F.pad(x, (r, r, 0, 0), mode=mode), k.view(1, 1, 1, -1))
        x = F.conv2d(F.pad(x, (0, 0, r, r), mode=mode), k.view(1, 1, -1, 1))
        x = x.round_().clamp_(0, 255).to(torch.uint8).reshape(-1, c, h, w).permute(0, 2, 3, 1)
        out[lo:lo + _CHUNK] = x.cpu().numpy()
    return out


@register_defense
class BitDepthReduction(Defense):
    name, kind = "bdr", "data"
    arg = SpecArg("bits", int, 1, 8)

    def __init__(self, bits: int = 2):
        self.bits = bits

    def apply(self, train: ImageDataset, *, seed: int = 0, device=None) -> ImageDataset:
        return train.with_images(reduce_bit_depth(train.images, self.bits))


@register_defense
class GaussianBlur(Defense):
    name, kind = "blur", "data"
    arg = SpecArg("sigma", float, 0.0, 64.0, positive=True)

    def __init__(self, sigma: float = 0.1):
        self.sigma = sigma

    def apply(self, train: ImageDataset, *, seed: int = 0, device=None) -> ImageDataset:
        return train.with_images(gaussian_blur(train.images, self.sigma, device))


@register_defense
class RandomNoise(Defense):
    name, kind = "noise", "batch"
    arg = SpecArg("std", float, 0.0, 255.0)

    def __init__(self, std: float = 8.0):
        self.std = std  # in 1/255 units

    def batch(self, model, x, y, generator):
        gdev = generator.device if generator is not None else torch.device("cpu")
        z = torch.randn(x.shape, generator=generator, device=gdev).to(x.device, non_blocking=True)
        return (x + z * (self.std / 255.0)).clamp_(0, 1), y
