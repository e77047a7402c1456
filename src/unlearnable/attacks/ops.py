"""OPS: one-pixel shortcut (Wu et al., "One-Pixel Shortcut: on the Learning Preference of
Deep Neural Networks", ICLR 2023). An L0 attack.

No model and no optimisation. For each class, one pixel position and one extreme colour
(every channel 0 or 1) are chosen, and that pixel is set to that colour in every image
of the class. The search follows the paper's idea: pick the (position, colour) whose
change from the class's own pixel values is large and consistent across the class, so
that the shortcut stands out everywhere. Here the score of a candidate is, over the
class's images, ``mean(d) - std(d)`` with ``d`` the L1 distance (over channels) between
the pixel and the colour (``objective="mean"`` drops the std term). Classes are served
in order and no two classes share a (position, colour) pair; with ``distinct_colours``
(our choice, on by default) a class also avoids the colours of earlier classes while
unused colours remain, so that with at most 2^C classes the colour alone tells the
classes apart, wherever the pixel lands after cropping.

The perturbation is unbounded in L-inf (``eps`` 1 by default: a pixel may move by up
to 255 levels) and bounded in L0: ``pixels`` positions per image (1 in the paper; more
pixels take the next best candidates of the class). The attack declares it through
:meth:`l0_pixels`, so the writer checks both norms and the manifest records
``norm: "l0"`` and ``l0_pixels``. Defaults from the paper: one pixel, colours at the
corners of the colour cube, one (position, colour) per class.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from itertools import product

import numpy as np
import torch

from ..errors import UnlearnableError
from .base import Attack, AttackResult, register_attack, unchanged_presets
from .pgd import project_dataset


@dataclass
class OPSConfig:
    eps: float = 1.0  # L-inf cap on the pixel change (1 = none, the paper's attack)
    pixels: int = 1  # L0 budget: changed pixel positions per image
    objective: str = "mean-std"  # or "mean"
    distinct_colours: bool = True  # a class takes a colour no earlier class uses, while any is left

    def validate(self):
        if not (0 < self.eps <= 1):
            raise UnlearnableError(f"eps must be in (0, 1] (pixel units; 8/255 = 0.0314), got {self.eps}")
        if int(self.pixels) != self.pixels or self.pixels < 1:
            raise UnlearnableError(f"ops: pixels must be a positive integer, got {self.pixels}")
        if self.objective not in ("mean-std", "mean"):
            raise UnlearnableError(f"ops: objective must be 'mean-std' or 'mean', got {self.objective!r}")


def colour_scores(images: np.ndarray, colours: np.ndarray, objective: str) -> np.ndarray:
    """Scores (n_colours, H, W) of setting each pixel to each colour, over ``images`` (uint8 NHWC)."""
    n, h, w, c = images.shape
    chunk = max(1, (1 << 22) // (h * w * c))  # about 32 MB of float64 at a time
    s1 = np.zeros((len(colours), h, w))
    s2 = np.zeros((len(colours), h, w))
    for i in range(0, n, chunk):
        x = images[i:i + chunk].astype(np.float64) / 255.0  # (B, H, W, C)
        for k, col in enumerate(colours):
            d = np.abs(x - col).sum(axis=3)  # (B, H, W)
            s1[k] += d.sum(0)
            s2[k] += (d * d).sum(0)
    mean = s1 / max(1, n)
    if objective == "mean":
        return mean
    return mean - np.sqrt(np.maximum(s2 / max(1, n) - mean * mean, 0.0))


@register_attack
class OPS(Attack):
    name = "ops"
    Config = OPSConfig
    presets = unchanged_presets(OPSConfig)

    def l0_pixels(self) -> int:
        return int(self.config.pixels)

    def generate(self, train, *, seed: int = 0, workdir=None, resume: bool = False) -> AttackResult:
        cfg = self.config
        n, h, w, c = train.images.shape
        if cfg.pixels > h * w:
            raise UnlearnableError(f"ops: {cfg.pixels} pixels asked for, images have {h * w}")
        colours = np.array(list(product((0.0, 1.0), repeat=c)))  # (2^C, C)
        taken: set[tuple[int, int]] = set()  # (flat position, colour index) already used by a class
        choice = []
        delta = torch.zeros((n, c, h, w), dtype=torch.float32)
        for k in range(train.num_classes):
            rows = np.flatnonzero(train.labels == k)
            if rows.size == 0:
                choice.append([])
                continue
            scores = colour_scores(train.images[rows], colours, cfg.objective).reshape(len(colours), -1)
            order = np.argsort(-scores, axis=None, kind="stable")  # best first, ties by index
            used_colours = {col for _, col in taken}
            fresh = cfg.distinct_colours and len(used_colours) < len(colours)
            picked, used_pos = [], set()
            for flat in order:
                col, pos = divmod(int(flat), h * w)
                if (pos, col) in taken or pos in used_pos or (fresh and col in used_colours):
                    continue
                picked.append((pos, col))
                used_pos.add(pos)
                if len(picked) == cfg.pixels:
                    break
            taken.update(picked)
            choice.append([{"row": pos // w, "col": pos % w, "colour": colours[col].tolist(),
                            "score": round(float(scores[col, pos]), 6)} for pos, col in picked])
            x = torch.from_numpy(train.images[rows]).permute(0, 3, 1, 2).float() / 255.0
            for pos, col in picked:
                i, j = divmod(pos, w)
                target = torch.tensor(colours[col], dtype=torch.float32).view(1, c)
                delta[torch.from_numpy(rows), :, i, j] = target - x[:, :, i, j]
        delta = project_dataset(train.images, delta.clamp_(-cfg.eps, cfg.eps), cfg.eps)
        return AttackResult(delta=delta, info={"config": asdict(cfg), "pixels": choice})
