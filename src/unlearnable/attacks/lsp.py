"""LSP: linear separable synthetic perturbations (Yu, Zhang, Chen, Yin and Liu,
"Availability Attacks Create Shortcuts", KDD 2022).

No model and no optimisation. Availability poisons work because the perturbations of
each class are linearly separable, so the paper builds such perturbations directly:
points of a Gaussian mixture in a low-dimensional space, one cluster per class, each
coordinate upsampled to a constant square patch. Here: class means ``mu_k ~ N(0, I)`` in
``C * grid * grid`` dimensions, each image's point ``mu_y + within_std * N(0, I)``, each
coordinate filling a patch of ``ceil(H / grid)`` x ``ceil(W / grid)`` pixels (cropped to
the image), and each image's perturbation scaled into the budget as AR's (an RMS of
0.5 eps, clipped to eps; ``scale="max"``: largest value eps).

Defaults from the paper: class-wise Gaussian clusters, patch-wise upsampling (8x8 patches
on 32x32 CIFAR images, i.e. a 4x4 grid). Our choices: the grid is fixed at 4x4 cells
whatever the image size (so 7x7 patches at 28 px and 56x56 at 224 px), the spread
within a class (``within_std`` 0.1) and, for the L-inf threat model of the other
attacks here, the RMS-and-clip scaling instead of the paper's L2 norm.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from ..errors import UnlearnableError
from ..runtime import make_generator
from ..train.loops import batches
from .ar import SCALES, scale_to_budget
from .base import Attack, AttackResult, check_eps, register_attack, unchanged_presets
from .pgd import project_dataset


@dataclass
class LSPConfig:
    eps: float = 8 / 255
    grid: int = 4  # cells per side; each cell is one coordinate of the synthetic point
    within_std: float = 0.1  # spread of a class's points around its mean (the means are N(0, I))
    scale: str = "rms"  # "rms": RMS = rms * eps per image, then clip to eps; "max": max |delta| = eps
    rms: float = 0.5

    def validate(self):
        check_eps(self.eps)
        if self.grid <= 0:
            raise UnlearnableError(f"lsp: grid must be positive, got {self.grid}")
        if self.within_std < 0:
            raise UnlearnableError(f"lsp: within_std must be non-negative, got {self.within_std}")
        if self.scale not in SCALES or self.rms <= 0:
            raise UnlearnableError(f"lsp: scale must be one of {SCALES} and rms positive")


@register_attack
class LSP(Attack):
    name = "lsp"
    Config = LSPConfig
    presets = unchanged_presets(LSPConfig)

    def generate(self, train, *, seed: int = 0, workdir=None, resume: bool = False) -> AttackResult:
        cfg = self.config
        gen = make_generator(seed)
        h, w = train.image_size
        g = min(cfg.grid, h, w)
        c = train.channels
        means = torch.randn((train.num_classes, c, g, g), generator=gen, dtype=torch.float64)
        labels = torch.from_numpy(train.labels)
        points = means[labels] + cfg.within_std * torch.randn((len(train), c, g, g), generator=gen,
                                                              dtype=torch.float64)
        ph, pw = -(-h // g), -(-w // g)
        delta = torch.empty((len(train), c, h, w), dtype=torch.float32)
        for idx in batches(len(train), 1024, None, "cpu"):
            p = points[idx].repeat_interleave(ph, dim=2).repeat_interleave(pw, dim=3)[:, :, :h, :w]
            delta[idx] = scale_to_budget(p, cfg.eps, cfg.scale, cfg.rms)
        return AttackResult(delta=project_dataset(train.images, delta, cfg.eps), info={"config": asdict(cfg)})
