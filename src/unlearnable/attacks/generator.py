"""The perturbation generator that GUE (:mod:`.gue`) and MI-UE-G (:mod:`.mi_ue_gen`) train,
and the maps from its output to poisoned images.

A generator maps a clean image (and, optionally, its class) to ``t`` in (-1, 1); the
poisoned image is ``x + eps * t`` clipped to the pixel range, or, with ``interval``, ``t``
mapped onto the pixel's feasible interval (:func:`interval_poison`). The attacks train on
:func:`generator_image` and write their poisons with :func:`generator_poisons`, so both
follow the same map. The written perturbation is formed as a difference (``eps * t``, or
the interval image minus ``x``) and projected, not taken from :func:`generator_image`, so
that its floating-point sums stay those of the released poisons.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..runtime import to_model_input
from ..train.loops import TensorData
from .pgd import project


def _block(c_in: int, c_out: int) -> nn.Sequential:
    """Two 3x3 conv + BatchNorm + ReLU layers."""
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(True),
                         nn.Conv2d(c_out, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(True))


class PerturbationGenerator(nn.Module):
    """An encoder-decoder with skip connections: (B, C, H, W) images in [0, 1] -> (B, C, H, W)
    in (-1, 1). ``levels`` 2x average-pool downsamplings (ceil mode), width ``width * 2**i``
    at level i; the decoder upsamples bilinearly to each skip's size, so any H, W works.
    ``map_size`` (H, W), with ``num_classes``, adds a learned full-resolution map per class
    before the tanh: a pattern that depends on the class alone, which the decoder (class
    information only at the bottleneck, mixed with the image's skips) cannot produce
    directly. It fixes the image size."""

    def __init__(self, channels: int, width: int = 32, levels: int = 3, num_classes: int | None = None,
                 map_size: tuple[int, int] | None = None):
        super().__init__()
        if map_size is not None and not num_classes:
            raise ValueError("class maps need num_classes")
        widths = [width * 2 ** i for i in range(levels + 1)]
        self.down = nn.ModuleList(_block(c_in, c_out) for c_in, c_out in zip([channels] + widths[:-1], widths))
        self.up = nn.ModuleList(_block(widths[i + 1] + widths[i], widths[i]) for i in reversed(range(levels)))
        self.embed = nn.Embedding(num_classes, widths[-1]) if num_classes else None
        self.out = nn.Sequential(nn.Conv2d(width, channels, 1), nn.BatchNorm2d(channels))
        self.class_maps = nn.Parameter(torch.zeros(num_classes, channels, *map_size)) if map_size else None

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        h, skips = x * 2 - 1, []
        for i, block in enumerate(self.down):
            if i:
                skips.append(h)
                h = F.avg_pool2d(h, 2, ceil_mode=True)
            h = block(h)
        if self.embed is not None:
            h = h + self.embed(y)[:, :, None, None]
        for block, skip in zip(self.up, reversed(skips)):
            h = F.interpolate(h, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            h = block(torch.cat([h, skip], 1))
        h = self.out(h)
        if self.class_maps is not None:
            h = h + self.class_maps[y]
        return torch.tanh(h)


def generator_image(x: torch.Tensor, t: torch.Tensor, eps: float, interval: bool = False) -> torch.Tensor:
    """The poisoned image for generator output ``t`` during training: ``x + eps * t`` clipped
    to [0, 1], or with ``interval`` :func:`interval_poison`."""
    return interval_poison(x, t, eps) if interval else (x + eps * t).clamp(0, 1)


def interval_poison(x: torch.Tensor, t: torch.Tensor, eps: float) -> torch.Tensor:
    """The poisoned image for a generator output ``t`` in (-1, 1), mapped onto each pixel's
    feasible interval ``[max(0, x - eps), min(1, x + eps)]``.

    Where the interval is the full ``2 eps`` this is ``x + eps * t``, the usual output. At a
    pixel near 0 or 1 it differs: ``(x + eps * t).clamp(0, 1)`` discards a negative ``t`` on
    a black pixel *and its gradient*, so a generator that drifts negative there is never told
    to come back (on Fashion-MNIST, half of every image is black). Here every value of ``t``
    is a distinct feasible pixel and the gradient never vanishes."""
    lo, hi = (x - eps).clamp(min=0), (x + eps).clamp(max=1)
    return lo + (hi - lo) * (t + 1) / 2


@torch.no_grad()
def generator_poisons(net, data: TensorData, *, eps: float, label_input: bool, channels_last: bool,
                      chunk: int, interval: bool = False) -> torch.Tensor:
    """A trained generator's perturbation of every training image (eval mode), projected to
    the budget and pixel range, on the CPU; ``chunk`` images at a time. ``interval``: the
    output is mapped by :func:`interval_poison` (as the generator was trained)."""
    net.eval()
    out = torch.empty(data.x.shape, dtype=torch.float32)
    for i in range(0, len(data), chunk):
        idx = torch.arange(i, min(i + chunk, len(data)), device=data.x.device)
        x, y = data.batch(idx)
        t = net(to_model_input(x, channels_last), y if label_input else None).float()
        d = interval_poison(x, t, eps) - x if interval else eps * t
        out[i:i + len(idx)] = project(x, d, eps).cpu()
    return out
