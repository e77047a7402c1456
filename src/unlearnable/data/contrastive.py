"""SimCLR's augmentations as batched tensor ops (Chen et al., "A Simple Framework for
Contrastive Learning of Visual Representations", ICML 2020).

One call augments a float NCHW batch in [0, 1] on its own device; every random draw
comes from the given ``torch.Generator`` (so a run is reproducible and checkpointable)
and every op is differentiable with respect to the input, so attacks (TUE, A-MI-UE) can
take gradients through the views exactly as the victim's SimCLR sees them.

The pipeline, per image, with the probabilities of the SimCLR paper (Appendix A):

1. random resized crop (area fraction in ``[crop_scale_min, 1]``, aspect ratio in
   [3/4, 4/3]) and horizontal flip (p 0.5), together as one bilinear ``grid_sample``;
2. colour jitter with probability 0.8: brightness, contrast, saturation (factors in
   [1 - 0.8 s, 1 + 0.8 s]) and hue (shift in [-0.2 s, 0.2 s] of a turn), ``s`` the
   strength;
3. random grayscale, p 0.2;
4. Gaussian blur (p 0.5, sigma in [0.1, 2] px, a kernel 10% of the image side), only
   where the paper uses it (ImageNet-size images).

Defaults by image size (``for_images``): the paper's CIFAR-10 setting at 32 px and
below (strength 0.5, no blur), its ImageNet setting above 64 px (strength 1.0, blur).
Our choices where the paper is silent or does not fit:

- ``crop_scale_min`` 0.2 for images of 32 px or less (the paper's 0.08 leaves a 8x8 px
  patch of a 28 px image), 0.08 above.
- Grey (1-channel) images get brightness and contrast jitter only: saturation, hue and
  grayscale do not exist for them.
- The jitter ops run in a fixed order (brightness, contrast, saturation, hue) instead of
  torchvision's random order; hue is a rotation of the chroma plane in YIQ space (a
  differentiable stand-in for the HSV hue shift), clamped to [0, 1] like every op.
- A crop that the aspect ratio would push outside the image is clipped to the image
  side (torchvision re-draws up to ten times, then falls back to a centre crop).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..errors import UnlearnableError
from .augment import _rand

# ITU-R BT.601 luma weights (torchvision's grayscale) and the YIQ chroma basis for hue.
_LUMA = (0.299, 0.587, 0.114)
_RGB2YIQ = ((0.299, 0.587, 0.114), (0.596, -0.274, -0.322), (0.211, -0.523, 0.312))


def _luma(x: torch.Tensor) -> torch.Tensor:
    if x.shape[1] == 1:
        return x
    w = torch.tensor(_LUMA, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x * w).sum(1, keepdim=True)


def _per_image(v: torch.Tensor) -> torch.Tensor:
    return v.view(-1, 1, 1, 1)


def resized_crop_flip(x: torch.Tensor, u: torch.Tensor, scale_min: float, flip: bool) -> torch.Tensor:
    """Crop + resize (+ flip) every image with one affine ``grid_sample``.

    ``u``: (5, B) uniform draws (area, log aspect ratio, centre x, centre y, flip).
    """
    area = scale_min + (1.0 - scale_min) * u[0]
    ratio = torch.exp(math.log(3 / 4) + (math.log(4 / 3) - math.log(3 / 4)) * u[1])
    cw = torch.sqrt(area * ratio).clamp(max=1.0)  # crop width as a fraction of the image width
    ch = torch.sqrt(area / ratio).clamp(max=1.0)
    cx = (1.0 - cw) * (2 * u[2] - 1)  # crop centre in grid coordinates, inside the image
    cy = (1.0 - ch) * (2 * u[3] - 1)
    sx = torch.where(u[4] < 0.5, -cw, cw) if flip else cw
    zero = torch.zeros_like(cw)
    theta = torch.stack([torch.stack([sx, zero, cx], 1), torch.stack([zero, ch, cy], 1)], 1)
    grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
    # Border padding: bilinear taps at the crop edge never mix in zeros, so values stay in [0, 1].
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def colour_jitter(x: torch.Tensor, u: torch.Tensor, strength: float) -> torch.Tensor:
    """Brightness, contrast (all images) then saturation and hue (RGB only).

    ``u``: (4, B) uniform draws, one row per op.
    """
    spread = 0.8 * strength
    factor = lambda row: _per_image(1 - spread + 2 * spread * row)  # noqa: E731
    x = (x * factor(u[0])).clamp(0, 1)
    mean = _luma(x).mean(dim=(1, 2, 3), keepdim=True)
    x = ((x - mean) * factor(u[1]) + mean).clamp(0, 1)
    if x.shape[1] == 3:
        grey = _luma(x)
        x = ((x - grey) * factor(u[2]) + grey).clamp(0, 1)
        x = hue_rotate(x, (2 * u[3] - 1) * 0.2 * strength)
    return x


def hue_rotate(x: torch.Tensor, turns: torch.Tensor) -> torch.Tensor:
    """Rotate each RGB image's chroma (I, Q in YIQ) by ``turns`` of a full circle."""
    m = torch.tensor(_RGB2YIQ, dtype=x.dtype, device=x.device)
    yiq = torch.einsum("ij,bjhw->bihw", m, x)
    a = 2 * math.pi * turns.to(x.dtype)
    cos, sin = _per_image(torch.cos(a)), _per_image(torch.sin(a))
    i, q = yiq[:, 1:2], yiq[:, 2:3]
    yiq = torch.cat([yiq[:, :1], cos * i - sin * q, sin * i + cos * q], 1)
    return torch.einsum("ij,bjhw->bihw", torch.linalg.inv(m), yiq).clamp(0, 1)


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor, kernel: int) -> torch.Tensor:
    """Separable Gaussian blur with one sigma per image (grouped convolutions, reflect padding)."""
    b, c, h, w = x.shape
    r = kernel // 2
    t = torch.arange(-r, r + 1, dtype=x.dtype, device=x.device)
    k = torch.exp(-(t[None] ** 2) / (2 * sigma.to(x.dtype)[:, None] ** 2))
    k = (k / k.sum(1, keepdim=True)).repeat_interleave(c, 0)  # (B*C, kernel)
    y = F.pad(x.reshape(1, b * c, h, w), (r, r, r, r), mode="reflect")
    y = F.conv2d(y, k.view(b * c, 1, 1, kernel), groups=b * c)
    y = F.conv2d(y, k.view(b * c, 1, kernel, 1), groups=b * c)
    return y.view(b, c, h, w)


class ContrastiveAugment:
    """SimCLR's augmentation pipeline for a given image size and channel count.

    ``aug(x, generator)`` returns one random view of each image in ``x`` (float NCHW in
    [0, 1]); call it twice for SimCLR's two views. The number of random draws depends on
    the batch shape only, never on which ops fire, so streams stay aligned across runs.
    """

    def __init__(self, image_size: int, channels: int, *, crop_scale_min: float | None = None,
                 strength: float | None = None, blur: bool | None = None, flip: bool = True,
                 jitter_p: float = 0.8, gray_p: float = 0.2, blur_p: float = 0.5):
        small = image_size <= 32
        self.image_size, self.channels = int(image_size), int(channels)
        self.crop_scale_min = float(crop_scale_min if crop_scale_min is not None else (0.2 if small else 0.08))
        self.strength = float(strength if strength is not None else (0.5 if small else 1.0))
        self.blur = bool(blur if blur is not None else image_size > 64)
        self.flip, self.jitter_p, self.gray_p, self.blur_p = flip, float(jitter_p), float(gray_p), float(blur_p)
        if channels not in (1, 3):
            raise UnlearnableError(f"contrastive augmentation needs 1 or 3 channels, got {channels}")
        if not (0 < self.crop_scale_min <= 1):
            raise UnlearnableError(f"crop_scale_min must be in (0, 1], got {self.crop_scale_min}")
        if self.strength < 0:
            raise UnlearnableError(f"augmentation strength must be non-negative, got {self.strength}")
        for name in ("jitter_p", "gray_p", "blur_p"):
            if not (0 <= getattr(self, name) <= 1):
                raise UnlearnableError(f"{name} must be a probability, got {getattr(self, name)}")
        # Blur kernel: 10% of the side, odd (the paper's ImageNet setting).
        self.kernel = max(3, int(0.1 * image_size) // 2 * 2 + 1)

    @classmethod
    def for_images(cls, dataset, **overrides) -> "ContrastiveAugment":
        """The default pipeline for an :class:`~unlearnable.data.ImageDataset`'s size and channels."""
        return cls(max(dataset.image_size), dataset.channels, **overrides)

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        if x.shape[1] != self.channels:
            raise UnlearnableError(f"augmentation built for {self.channels} channels got {x.shape[1]}")
        b = x.shape[0]
        u = _rand((13, b), generator, x.device)
        x = resized_crop_flip(x, u[0:5], self.crop_scale_min, self.flip)
        jitter = _per_image(u[5] < self.jitter_p)
        x = torch.where(jitter, colour_jitter(x, u[6:10], self.strength), x)
        if self.channels == 3:
            x = torch.where(_per_image(u[10] < self.gray_p), _luma(x).expand_as(x), x)
        if self.blur:
            sigma = 0.1 + 1.9 * u[12]
            x = torch.where(_per_image(u[11] < self.blur_p), gaussian_blur(x, sigma, self.kernel), x)
        return x

    def __repr__(self):
        return (f"ContrastiveAugment(size={self.image_size}, channels={self.channels}, "
                f"crop_scale_min={self.crop_scale_min}, strength={self.strength}, blur={self.blur})")
