"""Batched tensor augmentations, applied on the model's device.

All ops take a float NCHW batch and a ``torch.Generator`` and are differentiable with
respect to the input, so the same code serves victim training and expectation over
transformations during poison generation.
"""

from __future__ import annotations

import torch


def _rand(shape, generator, device):
    # Draw on the generator's device (CPU generators are the default), then move.
    gdev = generator.device if generator is not None else torch.device("cpu")
    return torch.rand(shape, generator=generator, device=gdev).to(device)


def random_crop(x: torch.Tensor, padding: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Zero-pad by ``padding`` and take a random HxW window per image (one gather)."""
    if padding <= 0:
        return x
    b, c, h, w = x.shape
    padded = torch.nn.functional.pad(x, (padding, padding, padding, padding))
    offs = (_rand((2, b), generator, x.device) * (2 * padding + 1)).long().clamp_(max=2 * padding)
    rows = (offs[0][:, None] + torch.arange(h, device=x.device))  # (B, H)
    cols = (offs[1][:, None] + torch.arange(w, device=x.device))  # (B, W)
    bi = torch.arange(b, device=x.device)[:, None, None]
    out = padded.permute(0, 2, 3, 1)[bi, rows[:, :, None], cols[:, None, :]]  # (B, H, W, C)
    return out.permute(0, 3, 1, 2).contiguous(memory_format=torch.contiguous_format)


def random_flip(x: torch.Tensor, generator: torch.Generator | None = None, p: float = 0.5) -> torch.Tensor:
    """Horizontal flip of each image with probability ``p``."""
    mask = (_rand((x.shape[0],), generator, x.device) < p).view(-1, 1, 1, 1)
    return torch.where(mask, x.flip(3), x)


class CropFlip:
    """Random crop with zero padding, then horizontal flip: the standard CIFAR policy."""

    def __init__(self, padding: int = 4, flip: bool = True):
        self.padding, self.flip = padding, flip

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        x = random_crop(x, self.padding, generator)
        return random_flip(x, generator) if self.flip else x

    def __repr__(self):
        return f"CropFlip(padding={self.padding}, flip={self.flip})"


def build_augment(name: str | None, padding: int = 4):
    """``"crop-flip"``, ``"crop"``, ``"flip"`` or ``None``/``"none"``."""
    from ..errors import UnlearnableError
    if name in (None, "none", ""):
        return None
    if name == "crop-flip":
        return CropFlip(padding, True)
    if name == "crop":
        return CropFlip(padding, False)
    if name == "flip":
        return CropFlip(0, True)
    raise UnlearnableError(f"unknown augmentation {name!r}; choose from none, crop-flip, crop, flip")
