"""AP: adversarial poisoning (Fowl, Goldblum, Chiang, Geiping, Czaja and Goldstein,
"Adversarial Examples Make Strong Poisons", NeurIPS 2021).

A source model is trained normally on the clean data; then every training image gets an
adversarial perturbation against that fixed model: targeted PGD that *lowers* the
cross-entropy towards a fixed class permutation, ``y -> (y + target_shift) mod K``
(``ap``, the paper's main attack), or untargeted PGD that raises the cross-entropy of the
true class (``ap-untargeted``). Differentiable crop+flip inside PGD (expectation over
transformations, one draw per step) makes the perturbations survive the victim's
augmentation, as in the paper.

Defaults from the paper (CIFAR-10): eps 8/255, 250 PGD steps, ResNet-18 source model,
class permutation y -> y+1, differentiable augmentation while crafting. Our choices: the
step size defaults to 2.5 eps / steps (the usual PGD rule) when ``step_size`` is None;
the source model is trained with SGD and a cosine schedule for ``epochs`` epochs with
crop+flip (40 in ``paper-cifar10``). The ``cpu`` preset: the 4-conv CNN trained 8
epochs, 20 PGD steps. Resumable: checkpoints after each training epoch and every 16
poison batches while crafting.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..data.augment import build_augment
from ..errors import UnlearnableError
from .base import Attack, AttackResult, ClassifierSourceConfig, inherit_presets, register_attack
from .pgd import pgd
from .source import SourceRun, train_then_craft


@dataclass
class APConfig(ClassifierSourceConfig):
    epochs: int = 8  # source-model training epochs (clean data)
    lr_min: float = 1e-6
    pgd_steps: int = 20
    step_size: float | None = None  # None: 2.5 * eps / pgd_steps
    targeted: bool = True
    target_shift: int = 1  # target class (y + target_shift) mod K
    pgd_augment: str = "crop-flip"  # expectation over transformations while crafting
    random_start: bool = False

    def validate(self):
        self.check_source("ap", ("pgd_steps",))
        if self.lr <= 0 or (self.step_size is not None and self.step_size <= 0):
            raise UnlearnableError("ap: lr and step_size must be positive")
        build_augment(self.pgd_augment, self.crop_padding)

    @property
    def step(self) -> float:
        return self.step_size if self.step_size is not None else 2.5 * self.eps / self.pgd_steps


@register_attack
class AP(Attack):
    name = "ap"
    Config = APConfig
    presets = {
        "cpu": APConfig(crop_padding=2),  # 28 px embedded data (as mi-ue's cpu preset)
        "paper-cifar10": APConfig(model="resnet-18", epochs=40, batch_size=128, pgd_steps=250),
    }

    def generate(self, train, *, seed: int = 0, workdir=None, resume: bool = False) -> AttackResult:
        cfg = self.config
        if cfg.targeted and cfg.target_shift % train.num_classes == 0:
            raise UnlearnableError(f"ap: target_shift {cfg.target_shift} maps every class to itself "
                                   f"({train.num_classes} classes)")
        run = SourceRun(self.name, cfg, train, seed=seed, workdir=workdir, resume=resume,
                        schedule="cosine", schedule_epochs=cfg.epochs)
        aug = build_augment(cfg.pgd_augment, cfg.crop_padding)
        k = train.num_classes

        def update_factory(run):
            transform = (lambda t: aug(t, run.gen)) if aug is not None else None

            def update(x, y, d):
                target = (y + cfg.target_shift) % k if cfg.targeted else y
                return pgd(lambda inp: run.ce(inp, target), x, d, steps=cfg.pgd_steps, step_size=cfg.step,
                           eps=cfg.eps, minimize=cfg.targeted, transform=transform,
                           random_start=cfg.random_start, generator=run.gen)
            return update

        train_then_craft(run, epochs=cfg.epochs, augment=build_augment(cfg.train_augment, cfg.crop_padding),
                         update_factory=update_factory)
        with torch.no_grad():
            delta = run.final_delta()
        return AttackResult(delta=delta, info=run.info(clean_source_acc=round(run.accuracy(), 5)))


@dataclass
class APUntargetedConfig(APConfig):
    targeted: bool = False


@register_attack
class APUntargeted(AP):
    """Untargeted AP: PGD that raises the source model's loss on the true class."""

    name = "ap-untargeted"
    Config = APUntargetedConfig
    presets = inherit_presets(AP, APUntargetedConfig)
