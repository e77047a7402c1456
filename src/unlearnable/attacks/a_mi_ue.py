"""A-MI-UE: MI-UE with contrastive-strength augmentations (Zhu et al., arXiv:2603.03725,
Appendix G.4, Table 20).

The paper extends MI-UE to contrastive victims (SimCLR) by incorporating the stronger
augmentations of contrastive learning into MI-UE's generation, following Wang, Zhu and
Gao, "Efficient Availability Attacks against Supervised and Contrastive Learning
Simultaneously" (NeurIPS 2024). Everything else is MI-UE (:mod:`.mi_ue`): the same
min-min loop, loss, budget, checkpoints and presets. Here the poisoned inputs are
passed through SimCLR's augmentations
(:class:`~unlearnable.data.contrastive.ContrastiveAugment`: random resized crop, flip,
colour jitter and grayscale for RGB, blur for large images) in both halves of each
epoch: the source model's cross-entropy batches (``train_augment``) and every PGD step
on the MI loss (``pgd_augment``, a fresh draw per step, i.e. expectation over
transformations with one sample).

Defaults: the paper gives no further detail; our choices are the MI-UE presets with
both augmentations set to ``"contrastive"`` at the strength SimCLR uses for the image
size (``aug_strength``/``crop_scale_min`` None; see data/contrastive.py). Either may be
set back to MI-UE's ``none``/``flip``/``crop``/``crop-flip``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from ..data.augment import build_augment
from ..data.contrastive import ContrastiveAugment
from .base import register_attack
from .mi_ue import MIUE, MIUEConfig

CONTRASTIVE = "contrastive"


@dataclass
class AMIUEConfig(MIUEConfig):
    train_augment: str = CONTRASTIVE
    pgd_augment: str = CONTRASTIVE
    aug_strength: float | None = None  # colour-jitter strength; None: SimCLR's for the image size
    crop_scale_min: float | None = None  # None: by image size

    def validate(self):
        # MI-UE's checks, with "contrastive" standing in for an augmentation it knows.
        plain = {k: ("none" if getattr(self, k) == CONTRASTIVE else getattr(self, k))
                 for k in ("train_augment", "pgd_augment")}
        MIUEConfig.validate(dataclasses.replace(self, **plain))
        ContrastiveAugment(32, 3, crop_scale_min=self.crop_scale_min, strength=self.aug_strength)


def _with_contrastive(cfg: MIUEConfig) -> AMIUEConfig:
    """An MI-UE preset with both augmentations switched to the contrastive ones."""
    keep = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in ("train_augment", "pgd_augment")}
    return AMIUEConfig(**keep)


@register_attack
class AMIUE(MIUE):
    name = "a-mi-ue"
    Config = AMIUEConfig
    presets = {name: _with_contrastive(cfg) for name, cfg in MIUE.presets.items()}

    def augmentations(self, train):
        cfg = self.config

        def build(name):
            if name == CONTRASTIVE:
                return ContrastiveAugment.for_images(train, crop_scale_min=cfg.crop_scale_min,
                                                     strength=cfg.aug_strength)
            return build_augment(name, cfg.crop_padding)

        return build(cfg.train_augment), build(cfg.pgd_augment)
