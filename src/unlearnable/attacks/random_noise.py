"""Random noise: i.i.d. uniform perturbations in [-eps, eps] (the paper's "Random" column).

The reference point for every other attack: same budget, no optimisation.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from ..runtime import make_generator
from .base import Attack, AttackResult, check_eps, register_attack, unchanged_presets
from .pgd import project


@dataclass
class RandomNoiseConfig:
    eps: float = 8 / 255

    def validate(self):
        check_eps(self.eps)


@register_attack
class RandomNoise(Attack):
    name = "random"
    Config = RandomNoiseConfig
    presets = unchanged_presets(RandomNoiseConfig)

    def generate(self, train, *, seed: int = 0, workdir=None, resume: bool = False) -> AttackResult:
        gen = make_generator(seed)
        x = torch.from_numpy(train.images).permute(0, 3, 1, 2).float() / 255.0
        noise = (torch.rand(x.shape, generator=gen) * 2 - 1) * self.config.eps
        return AttackResult(delta=project(x, noise, self.config.eps), info={"config": asdict(self.config)})
