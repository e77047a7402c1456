"""Cutout, CutMix and Mixup: batch defenses that run inside the training loop.

Each is a :class:`~unlearnable.defenses.Defense` of kind "batch": ``batch(model, x,
target, generator) -> (x, target)`` on the model's device, batched (no per-sample Python
work), with its random draws taken from the training generator (CPU stream, moved to the
device), so a seeded run repeats exactly. Targets come in as int64 labels or a (B, K)
soft-label matrix and leave as a soft-label matrix for CutMix and Mixup, which the
cross-entropy of the loop takes as is. Defaults are those of each paper's CIFAR setting.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..defenses.base import Defense, SpecArg, register_defense


def uniform(shape, generator: torch.Generator | None, device) -> torch.Tensor:
    """U[0, 1) drawn from ``generator`` (on its own device, CPU by default), then moved."""
    gdev = generator.device if generator is not None else torch.device("cpu")
    return torch.rand(shape, generator=generator, device=gdev).to(device, non_blocking=True)


def beta(alpha: float, generator: torch.Generator | None) -> float:
    """One Beta(alpha, alpha) draw from the training generator's stream (torch has no seeded Beta)."""
    seed = int(torch.randint(0, 2**62, (1,), generator=generator))
    return float(np.random.default_rng(seed).beta(alpha, alpha))


def num_classes_of(model) -> int:
    """The number of outputs of a :class:`~unlearnable.models.FeatureModel` (its head on one zero feature)."""
    p = next(model.parameters())
    was = model.training
    model.eval()
    with torch.no_grad():
        k = model.head(torch.zeros(1, model.feature_dim, device=p.device, dtype=p.dtype)).shape[1]
    model.train(was)
    return int(k)


def soft_targets(model, target: torch.Tensor) -> torch.Tensor:
    if target.dtype != torch.long:
        return target.float()
    return F.one_hot(target, num_classes_of(model)).float()


@register_defense
class Cutout(Defense):
    """Cutout (DeVries & Taylor 2017): zero one ``size`` x ``size`` square per image.

    Defaults: half the image side (their CIFAR-10 setting: 16 px of 32), the centre
    uniform over the image so the square may be clipped at the border, applied to every
    image. Spec ``cutout`` or ``cutout:SIZE`` (pixels). Zero is black here: the models take
    [0, 1] pixels without normalisation (the paper cuts after normalising, i.e. the mean).
    """

    name, kind = "cutout", "batch"
    arg = SpecArg("size", int, 1, 4096)

    def __init__(self, size: int | None = None):
        self.size = size

    def batch(self, model, x, y, generator):
        b, _, h, w = x.shape
        s = self.size or max(1, min(h, w) // 2)
        centre = (uniform((2, b), generator, x.device) * torch.tensor([[h], [w]], device=x.device)).long()
        top, left = centre[0] - s // 2, centre[1] - s // 2
        rows = torch.arange(h, device=x.device)
        cols = torch.arange(w, device=x.device)
        in_r = (rows >= top[:, None]) & (rows < top[:, None] + s)  # (B, H)
        in_c = (cols >= left[:, None]) & (cols < left[:, None] + s)  # (B, W)
        hole = (in_r[:, :, None] & in_c[:, None, :])[:, None]  # (B, 1, H, W)
        return x.masked_fill(hole, 0.0), y


@register_defense
class Mixup(Defense):
    """Mixup (Zhang et al. 2018): ``lam * x + (1 - lam) * x[perm]`` with the same mix of targets.

    One ``lam ~ Beta(alpha, alpha)`` per batch and a random pairing ``perm``, as in the
    paper; default alpha 1.0 (their CIFAR-10 setting). Spec ``mixup`` or ``mixup:ALPHA``.
    """

    name, kind = "mixup", "batch"
    arg = SpecArg("alpha", float, 0.0, 1e3, positive=True, always=False)

    def __init__(self, alpha: float = 1.0):
        self.alpha = alpha

    def batch(self, model, x, y, generator):
        lam = beta(self.alpha, generator)
        perm = torch.randperm(x.shape[0], generator=generator).to(x.device)
        t = soft_targets(model, y)
        return lam * x + (1 - lam) * x[perm], lam * t + (1 - lam) * t[perm]


@register_defense
class CutMix(Defense):
    """CutMix (Yun et al. 2019): paste a box from a paired image; targets mix by the box's area.

    Per batch: ``lam ~ Beta(alpha, alpha)`` (alpha 1), a box of sides ``H sqrt(1 - lam)``
    by ``W sqrt(1 - lam)`` centred uniformly and clipped to the image, the same box for the
    whole batch, and ``lam`` corrected to the unpasted area. Applied to a batch with
    probability ``prob`` = 0.5 (the authors' CIFAR setting); untouched batches keep their
    targets. Spec ``cutmix`` or ``cutmix:PROB``.
    """

    name, kind = "cutmix", "batch"
    arg = SpecArg("prob", float, 0.0, 1.0, always=False)

    def __init__(self, prob: float = 0.5, alpha: float = 1.0):
        self.prob, self.alpha = prob, alpha

    def batch(self, model, x, y, generator):
        t = soft_targets(model, y)
        draws = torch.rand(3, generator=generator)  # apply?, centre row, centre column
        lam = beta(self.alpha, generator)
        if float(draws[0]) >= self.prob:
            return x, t
        b, _, h, w = x.shape
        cut = (1.0 - lam) ** 0.5
        ch, cw = int(h * cut), int(w * cut)
        cy, cx = int(draws[1] * h), int(draws[2] * w)
        y0, y1 = max(cy - ch // 2, 0), min(cy + ch // 2, h)
        x0, x1 = max(cx - cw // 2, 0), min(cx + cw // 2, w)
        lam = 1.0 - (y1 - y0) * (x1 - x0) / (h * w)
        perm = torch.randperm(b, generator=generator).to(x.device)
        out = x.clone()
        out[:, :, y0:y1, x0:x1] = x[perm][:, :, y0:y1, x0:x1]
        return out, lam * t + (1 - lam) * t[perm]
