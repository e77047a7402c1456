"""EM: error-minimising noise (Huang, Ma, Erfani, Bailey and Wang, "Unlearnable Examples:
Making Personal Data Unexploitable", ICLR 2021).

A min-min problem, min_theta min_delta CE(f_theta(x + delta), y), solved in rounds:

1. ``train_steps`` SGD batches of the source model on the current poisoned data
   (a fresh shuffle each round, with ``train_augment``);
2. one pass over every poison: ``pgd_steps`` signed-gradient steps of ``step_size`` that
   *lower* the source model's cross-entropy (eval mode), projected to the L-inf ball of
   radius ``eps`` and to the valid pixel range;
3. stop once the source model's accuracy on the poisoned training set (no augmentation)
   reaches ``stop_acc``, or after ``epochs`` rounds.

Sample-wise (``em``, one perturbation per image) and class-wise (``em-class``, one per
class). Class-wise poisons are updated as in the paper's code: each batch runs PGD per
sample from its class's perturbation, then each class present in the batch takes the
mean of its samples' results, clipped to eps.

Defaults from the paper (CIFAR-10): eps 8/255, 20 steps of 0.8/255, 10 source-model
batches per round, stop at error < 0.01 (sample-wise) or < 0.1 (class-wise), poisons
initialised uniformly in [-eps, eps], source SGD lr 0.1, momentum 0.9, weight decay 5e-4
at a constant rate. Our choices where the paper leaves it open: crop+flip for the
source-model batches (``train_augment``), a cap on the number of rounds (``epochs``).
The ``cpu`` preset uses the 4-conv CNN, 10 steps of 1.6/255 and at most 10 rounds.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import UnlearnableError
from .base import Attack, AttackResult, ClassifierSourceConfig, inherit_presets, register_attack
from .pgd import pgd
from .source import run_min_min

MODES = ("sample", "class")


@dataclass
class EMConfig(ClassifierSourceConfig):
    mode: str = "sample"  # "sample": one perturbation per image; "class": one per class
    epochs: int = 10  # rounds, at most: train_steps source batches, then one PGD pass over the data
    train_steps: int = 10  # source-model batches per round
    pgd_steps: int = 10
    step_size: float = 1.6 / 255
    stop_acc: float | None = None  # None: 0.99 sample-wise, 0.9 class-wise (the paper's error thresholds)
    init: str = "uniform"  # "uniform" in [-eps, eps] (the paper) or "zero"

    def validate(self):
        self.check_source("em", ("train_steps", "pgd_steps"))
        if self.step_size <= 0 or self.lr <= 0:
            raise UnlearnableError("em: step_size and lr must be positive")
        if self.mode not in MODES:
            raise UnlearnableError(f"em: mode must be one of {MODES}, got {self.mode!r}")
        if self.init not in ("uniform", "zero"):
            raise UnlearnableError(f"em: init must be 'uniform' or 'zero', got {self.init!r}")
        if self.stop_acc is not None and not (0 < self.stop_acc <= 1):
            raise UnlearnableError(f"em: stop_acc must be in (0, 1], got {self.stop_acc}")

    @property
    def stop_at(self) -> float:
        if self.stop_acc is not None:
            return self.stop_acc
        return 0.99 if self.mode == "sample" else 0.9


@register_attack
class EM(Attack):
    name = "em"
    Config = EMConfig
    presets = {
        "cpu": EMConfig(crop_padding=2),  # 28 px embedded data (as mi-ue's cpu preset)
        "paper-cifar10": EMConfig(model="resnet-18", epochs=100, batch_size=512, pgd_steps=20, step_size=0.8 / 255),
    }

    def generate(self, train, *, seed: int = 0, workdir=None, resume: bool = False) -> AttackResult:
        cfg = self.config

        def update_factory(run):
            def update(x, y, d):
                return pgd(lambda inp: run.ce(inp, y), x, d, steps=cfg.pgd_steps, step_size=cfg.step_size,
                           eps=cfg.eps)
            return update

        return run_min_min(self, train, seed=seed, workdir=workdir, resume=resume, update_factory=update_factory)


@dataclass
class EMClassConfig(EMConfig):
    mode: str = "class"


@register_attack
class EMClass(EM):
    """Class-wise EM: one perturbation per class (the same defaults, stop at 90% accuracy)."""

    name = "em-class"
    Config = EMClassConfig
    presets = inherit_presets(EM, EMClassConfig)
