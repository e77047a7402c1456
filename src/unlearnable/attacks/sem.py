"""SEM: stable error-minimising noise (Liu et al., "Stable Unlearnable Example: Enhancing
the Robustness of Unlearnable Examples via Stable Error-Minimizing Noise", AAAI 2024).

REM (:mod:`.rem`) with its inner adversary replaced by random noise: the source model is
trained on t(x + delta) + rho and the poisons minimise the EOT-averaged cross-entropy at
t(x + delta) + rho, where rho is drawn uniformly from the L-inf ball of radius
``adv_eps`` (default eps / 2) instead of being the worst case found by PGD. The paper's
point is that a surrogate trained against random perturbations gives noise that is
more stable and far cheaper to make (no inner maximisation).

Defaults: those of REM (eps 8/255, radius eps / 2, EOT over crop+flip), with
``inner="random"``; the ``cpu`` preset can afford twice REM's rounds since no adversary
is run: 4-conv CNN, 10 rounds of 10 batches, 5 poison steps of 2/255, 2 EOT samples.
"""

from __future__ import annotations

from dataclasses import dataclass

from .base import register_attack
from .rem import REM, REMConfig


@dataclass
class SEMConfig(REMConfig):
    epochs: int = 10
    inner: str = "random"


@register_attack
class SEM(REM):
    name = "sem"
    Config = SEMConfig
    presets = {
        "cpu": SEMConfig(crop_padding=2),  # 28 px embedded data (as mi-ue's cpu preset)
        "paper-cifar10": SEMConfig(model="resnet-18", epochs=100, batch_size=128, pgd_steps=10, step_size=0.8 / 255,
                                   eot_samples=5),
    }
