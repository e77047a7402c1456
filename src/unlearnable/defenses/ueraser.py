"""UEraser (Qin et al. 2023, "Learning the Unlearnable: Adversarial Augmentations Suppress
Unlearnable Example Attacks"): train on the worst of K strong augmentations.

Per batch, ``K`` augmented copies of every image are drawn from a strong random policy
(plasma brightness, plasma contrast, channel shuffle, then TrivialAugment); the model
trains on the copy with the largest loss, per sample ("adversarial augmentation",
``max_k CE(f(aug_k(x)), y)``). Defaults from the paper: K = 5, the max-loss form for the
whole run (UEraser-Max); ``ueraser:1`` is UEraser-Lite (one augmented copy, no max).
Spec ``ueraser`` or ``ueraser:K``.

Implementation choices (the paper uses Kornia's ops; these are our batched versions):
- plasma maps are fractal value noise: octaves of uniform noise on (2^o + 1)^2 grids,
  bilinearly upsampled and weighted ``roughness^o``, roughness ~ U(0.1, 0.7), min-max
  normalised to [0, 1] per image (Kornia draws them by diamond-square; same family);
  brightness adds ``intensity * (P - 1/2)``, intensity ~ U(0, 1); contrast scales the
  deviation from 1/2 by ``2 P``; both always on, as in the paper; channel shuffle p = 0.5;
- TrivialAugment (Mueller & Hutter 2021), "wide" ranges, one op per image with a
  magnitude from 31 bins: identity, auto-contrast, equalize, rotate (135 deg), solarize,
  colour, posterize (2-8 bits), contrast, brightness, sharpness (factors 0.01-1.99),
  shear x/y (0.99), translate x/y (up to the image side); signed ops get a random sign;
  geometric ops use nearest sampling with zero fill;
- the max is taken by selection: the K copies are scored with the model in train mode
  under ``no_grad`` (BatchNorm uses each copy's batch statistics, as when training on
  it, but its running statistics are left untouched), and the loop trains on the chosen
  copy. By Danskin's theorem this has the gradient of the max-loss objective, at the cost
  of K cheap forward passes and one forward/backward instead of K of each.
Every op is a batched tensor op on the model's device: no per-sample Python work.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..train.mixing import uniform
from .base import Defense, SpecArg, register_defense

N_OPS = 14
IDENTITY, AUTOCONTRAST, EQUALIZE, ROTATE, SOLARIZE, COLOR, POSTERIZE, CONTRAST, BRIGHTNESS, SHARPNESS, \
    SHEAR_X, SHEAR_Y, TRANSLATE_X, TRANSLATE_Y = range(N_OPS)


def _bcast(v: torch.Tensor) -> torch.Tensor:
    return v.view(-1, 1, 1, 1)


def _grey(x: torch.Tensor) -> torch.Tensor:
    if x.shape[1] == 1:
        return x
    return (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3])


def plasma(b: int, h: int, w: int, roughness: torch.Tensor, generator, device) -> torch.Tensor:
    """(B, 1, H, W) fractal maps in [0, 1]; ``roughness`` (B,) sets how fast octaves fade."""
    octaves = max(1, math.ceil(math.log2(max(h, w))))
    total = torch.zeros(b, 1, h, w, device=device)
    for o in range(octaves):
        g = 2 ** o + 1
        grid = uniform((b, 1, g, g), generator, device)
        total += _bcast(roughness ** o) * F.interpolate(grid, size=(h, w), mode="bilinear", align_corners=True)
    lo = total.amin(dim=(1, 2, 3), keepdim=True)
    hi = total.amax(dim=(1, 2, 3), keepdim=True)
    return (total - lo) / (hi - lo).clamp_min(1e-6)


def channel_shuffle(x: torch.Tensor, apply: torch.Tensor, generator) -> torch.Tensor:
    """Permute the channels of the images where ``apply`` (B,) is true (one random order each)."""
    b, c = x.shape[:2]
    if c == 1:
        return x
    order = uniform((b, c), generator, x.device).argsort(dim=1)
    order = torch.where(apply[:, None], order, torch.arange(c, device=x.device))
    return x.gather(1, order[:, :, None, None].expand_as(x))


def equalize(x: torch.Tensor) -> torch.Tensor:
    """Per image and channel histogram equalisation on 256 levels (Pillow's ImageOps.equalize rule)."""
    b, c, h, w = x.shape
    v = (x * 255).round().clamp(0, 255).long().view(b * c, h * w)
    hist = torch.zeros(b * c, 256, device=x.device).scatter_add_(1, v, torch.ones_like(v, dtype=torch.float))
    last = hist.gather(1, v.amax(1, keepdim=True))  # count of the brightest level present
    step = torch.div(h * w - last, 255, rounding_mode="floor")  # (BC, 1)
    before = hist.cumsum(1) - hist  # pixels strictly below each level
    lut = torch.div(before + torch.div(step, 2, rounding_mode="floor"), step.clamp_min(1), rounding_mode="floor")
    lut = lut.clamp(0, 255)
    out = lut.gather(1, v) / 255.0
    keep = (step <= 0)  # nothing to spread: Pillow returns the image unchanged
    return torch.where(keep, v.float() / 255.0, out).view(b, c, h, w)


def sharpen(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Pillow's sharpness: blend with a 3x3 smoothed copy (borders kept) by ``factor``."""
    c = x.shape[1]
    k = torch.tensor([[1.0, 1.0, 1.0], [1.0, 5.0, 1.0], [1.0, 1.0, 1.0]], device=x.device) / 13.0
    smooth = F.conv2d(x, k.expand(c, 1, 3, 3), padding=1, groups=c)
    border = torch.ones_like(x[:1, :1], dtype=torch.bool)
    border[..., 1:-1, 1:-1] = False
    smooth = torch.where(border, x, smooth)
    return smooth + factor * (x - smooth)


def trivial_augment(x: torch.Tensor, generator) -> torch.Tensor:
    """TrivialAugment-Wide: one random op with a random magnitude per image (batched)."""
    b, c, h, w = x.shape
    dev = x.device
    u = uniform((4, b), generator, dev)
    op = (u[0] * N_OPS).long().clamp_(max=N_OPS - 1)
    mag = (u[1] * 31).floor().clamp_(max=30) / 30.0  # 31 magnitude bins in [0, 1]
    sign = torch.where(u[2] < 0.5, -1.0, 1.0)

    # Geometric ops: one affine grid for the whole batch (identity where the op is not geometric).
    theta = torch.eye(2, 3, device=dev).repeat(b, 1, 1)
    ang = torch.where(op == ROTATE, sign * mag * math.radians(135.0), torch.zeros_like(mag))
    theta[:, 0, 0], theta[:, 0, 1] = torch.cos(ang), -torch.sin(ang) * h / w
    theta[:, 1, 0], theta[:, 1, 1] = torch.sin(ang) * w / h, torch.cos(ang)
    shear = sign * mag * 0.99
    theta[:, 0, 1] += torch.where(op == SHEAR_X, shear * h / w, torch.zeros_like(shear))
    theta[:, 1, 0] += torch.where(op == SHEAR_Y, shear * w / h, torch.zeros_like(shear))
    shift = sign * mag * 2.0  # normalised coordinates: 2 = the full side
    theta[:, 0, 2] = torch.where(op == TRANSLATE_X, shift, torch.zeros_like(shift))
    theta[:, 1, 2] = torch.where(op == TRANSLATE_Y, shift, torch.zeros_like(shift))
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    geo = (op == ROTATE) | (op >= SHEAR_X)
    out = torch.where(_bcast(geo), F.grid_sample(x, grid, mode="nearest", padding_mode="zeros",
                                                 align_corners=False), x)

    factor = _bcast(1.0 + sign * mag * 0.99)
    grey = _grey(x)
    mean = grey.mean(dim=(1, 2, 3), keepdim=True)
    lo, hi = x.amin(dim=(2, 3), keepdim=True), x.amax(dim=(2, 3), keepdim=True)
    bits = _bcast(8 - (mag * 6).round())
    levels = 2.0 ** (8 - bits)
    colour_ops = (
        (AUTOCONTRAST, lambda: torch.where(hi > lo, (x - lo) / (hi - lo).clamp_min(1e-6), x)),
        (EQUALIZE, lambda: equalize(x)),
        (SOLARIZE, lambda: torch.where(x >= _bcast(1.0 - mag), 1.0 - x, x)),
        (COLOR, lambda: grey + factor * (x - grey)),
        (POSTERIZE, lambda: torch.floor((x * 255).round() / levels) * levels / 255.0),
        (CONTRAST, lambda: mean + factor * (x - mean)),
        (BRIGHTNESS, lambda: factor * x),
        (SHARPNESS, lambda: sharpen(x, factor)),
    )
    for k, fn in colour_ops:  # a loop over ops (not samples); where() keeps each image's own op
        out = torch.where(_bcast(op == k), fn(), out)
    return out.clamp_(0, 1)


def ueraser_augment(x: torch.Tensor, generator) -> torch.Tensor:
    """One draw of the UEraser policy for a batch: plasma brightness, plasma contrast,
    channel shuffle (p = 0.5), TrivialAugment."""
    b, _, h, w = x.shape
    u = uniform((4, b), generator, x.device)
    x = (x + _bcast(u[0]) * (plasma(b, h, w, 0.1 + 0.6 * u[1], generator, x.device) - 0.5)).clamp_(0, 1)
    x = ((x - 0.5) * 2 * plasma(b, h, w, 0.1 + 0.6 * u[2], generator, x.device) + 0.5).clamp_(0, 1)
    x = channel_shuffle(x, u[3] < 0.5, generator)
    return trivial_augment(x, generator)


class _FrozenBatchNormStats:
    """Inside: BatchNorm layers normalise with batch statistics but keep their running ones."""

    def __init__(self, model):
        self.bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]

    def __enter__(self):
        self.saved = [(m.momentum, None if m.num_batches_tracked is None else m.num_batches_tracked.clone())
                      for m in self.bns]
        for m in self.bns:
            m.momentum = 0.0
        return self

    def __exit__(self, *exc):
        for m, (mom, nbt) in zip(self.bns, self.saved):
            m.momentum = mom
            if nbt is not None:
                m.num_batches_tracked.copy_(nbt)


@register_defense
class UEraser(Defense):
    name, kind = "ueraser", "batch"
    arg = SpecArg("repeats", int, 1, 64, always=False)

    def __init__(self, repeats: int = 5):
        self.repeats = repeats

    def batch(self, model, x, y, generator):
        copies = [ueraser_augment(x, generator) for _ in range(self.repeats)]
        if self.repeats == 1:
            return copies[0], y
        was = model.training
        model.train()
        with torch.no_grad(), _FrozenBatchNormStats(model):
            losses = torch.stack([F.cross_entropy(model(c).float(), y, reduction="none") for c in copies])  # (K, B)
        model.train(was)
        pick = losses.argmax(0)  # (B,) the worst copy of each sample
        stacked = torch.stack(copies)  # (K, B, C, H, W)
        return stacked[pick, torch.arange(x.shape[0], device=x.device)], y
