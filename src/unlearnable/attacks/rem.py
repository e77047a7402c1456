"""REM: robust error-minimising noise (Fu, He, Liu, Shen and Tao, "Robust Unlearnable
Examples: Protecting Data Against Adversarial Learning", ICLR 2022).

A min-min-max problem, min_theta E_t min_delta max_{|rho| <= adv_eps}
CE(f_theta(t(x + delta) + rho), y): EM's rounds (:func:`.em.run_min_min`) with

- a source model trained adversarially: each of the ``train_steps`` batches per round is
  replaced by its PGD adversarial example of radius ``adv_eps`` before the SGD step;
- a poison update whose loss, at every one of the ``pgd_steps`` signed-gradient steps,
  averages over ``eot_samples`` random transformations t (expectation over
  transformations, crop+flip) the cross-entropy at the worst-case rho found by
  ``adv_steps`` of PGD (random start) around t(x + delta).

Defaults from the paper: eps 8/255, adversarial radius adv_eps = eps / 2 (4/255), EOT
over the training augmentation, sample-wise noise, EM-style alternation. Our choices: the
remaining numbers (below), adversary step 2.5 adv_eps / adv_steps, no accuracy stop by
default (REM's adversarially trained source model rarely reaches EM's threshold; set
``stop_acc`` to stop early). The ``cpu`` preset: 4-conv CNN, 5 rounds of 10 batches,
5 poison steps of 2/255, 2 EOT samples, 2 adversary steps. ``paper-cifar10``: ResNet-18,
at most 100 rounds, 10 poison steps of 0.8/255, 5 EOT samples, 10 adversary steps.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..data.augment import build_augment
from ..errors import UnlearnableError
from .base import Attack, AttackResult, ClassifierSourceConfig, register_attack
from .pgd import pgd, project
from .source import run_min_min

INNER = ("pgd", "random")


@dataclass
class REMConfig(ClassifierSourceConfig):
    epochs: int = 5  # rounds
    train_steps: int = 10  # source-model batches per round
    pgd_steps: int = 5
    step_size: float = 2 / 255
    adv_eps: float | None = None  # None: eps / 2
    adv_steps: int = 2
    adv_step_size: float | None = None  # None: 2.5 * adv_eps / adv_steps
    inner: str = "pgd"  # "pgd": worst-case rho (REM); "random": uniform rho (SEM)
    eot_samples: int = 2
    eot_augment: str = "crop-flip"
    stop_acc: float | None = None  # stop once the source model fits the poisoned data this well
    init: str = "uniform"

    def validate(self):
        self.check_source(type(self).__name__, ("train_steps", "pgd_steps", "eot_samples"))
        if self.adv_steps < 0:
            raise UnlearnableError(f"adv_steps must be non-negative, got {self.adv_steps}")
        if self.step_size <= 0 or self.lr <= 0:
            raise UnlearnableError("step_size and lr must be positive")
        if self.adv_eps is not None and not (0 <= self.adv_eps <= 1):
            raise UnlearnableError(f"adv_eps must be in [0, 1], got {self.adv_eps}")
        if self.adv_step_size is not None and self.adv_step_size <= 0:
            raise UnlearnableError("adv_step_size must be positive")
        if self.inner not in INNER:
            raise UnlearnableError(f"inner must be one of {INNER}, got {self.inner!r}")
        if self.init not in ("uniform", "zero"):
            raise UnlearnableError(f"init must be 'uniform' or 'zero', got {self.init!r}")
        if self.stop_acc is not None and not (0 < self.stop_acc <= 1):
            raise UnlearnableError(f"stop_acc must be in (0, 1], got {self.stop_acc}")
        build_augment(self.eot_augment, self.crop_padding)

    @property
    def radius(self) -> float:
        return self.eps / 2 if self.adv_eps is None else self.adv_eps

    @property
    def adv_step(self) -> float:
        if self.adv_step_size is not None:
            return self.adv_step_size
        return 2.5 * self.radius / max(1, self.adv_steps)

    @property
    def stop_at(self) -> float | None:
        return self.stop_acc


def uniform_rho(x: torch.Tensor, radius: float, gen: torch.Generator) -> torch.Tensor:
    """Uniform noise in [-radius, radius], kept inside the pixel range around ``x``."""
    noise = torch.rand(x.shape, generator=gen).to(x.device)
    return project(x, (2 * noise - 1) * radius, radius)


@register_attack
class REM(Attack):
    name = "rem"
    Config = REMConfig
    presets = {
        "cpu": REMConfig(crop_padding=2),  # 28 px embedded data (as mi-ue's cpu preset)
        "paper-cifar10": REMConfig(model="resnet-18", epochs=100, batch_size=128, pgd_steps=10, step_size=0.8 / 255,
                                   adv_steps=10, eot_samples=5),
    }

    def _inner(self, run):
        """rho(t, y) for a fixed input t: the adversary of the poison update."""
        cfg = self.config
        radius = cfg.radius
        if cfg.inner == "random":
            return lambda t, y: uniform_rho(t, radius, run.gen)

        def worst(t, y):
            if radius <= 0 or cfg.adv_steps == 0:
                return torch.zeros_like(t)
            return pgd(lambda z: run.ce(z, y), t, torch.zeros_like(t), steps=cfg.adv_steps, step_size=cfg.adv_step,
                       eps=radius, minimize=False, random_start=True, generator=run.gen)
        return worst

    def _model_perturb(self, run):
        cfg = self.config
        if cfg.inner == "random":
            return lambda model, x, y: x + uniform_rho(x, cfg.radius, run.gen)
        return run.adversary(cfg.radius, cfg.adv_steps, cfg.adv_step)

    def generate(self, train, *, seed: int = 0, workdir=None, resume: bool = False) -> AttackResult:
        cfg = self.config
        aug = build_augment(cfg.eot_augment, cfg.crop_padding)

        def update_factory(run):
            inner = self._inner(run)

            def update(x, y, d):
                def loss_fn(inp):
                    total = 0.0
                    for _ in range(cfg.eot_samples):
                        t = aug(inp, run.gen) if aug is not None else inp
                        rho = inner(t.detach(), y)
                        total = total + run.ce(t + rho, y)
                    return total / cfg.eot_samples
                return pgd(loss_fn, x, d, steps=cfg.pgd_steps, step_size=cfg.step_size, eps=cfg.eps)
            return update

        return run_min_min(self, train, seed=seed, workdir=workdir, resume=resume, update_factory=update_factory,
                           model_perturb=self._model_perturb)
