"""ENTF: entangled features (Wen et al., "Is Adversarial Training Really a Silver Bullet for
Mitigating Data Poisoning?", ICLR 2023).

Poisons meant to survive adversarial training. A source model is trained adversarially
(PGD of radius ``adv_eps``) on the clean data, so its features are those an adversarially
trained victim would learn. Each class then gets a target class, and every image is
perturbed so that its source-model features move to the target class's feature centroid
(mean penultimate features of that class's clean images): PGD that lowers the squared
distance, with crop+flip inside (expectation over transformations). Features of
different classes end up entangled, and a victim cannot separate them even when it
trains adversarially.

Defaults from the paper: eps 8/255, an adversarially trained source model with the
poison's radius, features pushed to another class's centroid. Our choices:
``target="nearest"`` (the class whose centroid is nearest to the class's own; "next"
maps y -> y + 1), squared Euclidean distance on raw features, PGD step
2.5 eps / steps, SGD with a cosine schedule for the source model. The ``cpu`` preset:
4-conv CNN trained 8 epochs with 3-step PGD, 20 crafting steps.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..data.augment import build_augment
from ..errors import UnlearnableError
from ..runtime import autocast, to_model_input
from ..train.loops import batches
from .base import Attack, AttackResult, ClassifierSourceConfig, register_attack
from .pgd import pgd
from .source import SourceRun, train_then_craft


@dataclass
class ENTFConfig(ClassifierSourceConfig):
    epochs: int = 8  # adversarial training epochs of the source model
    lr_min: float = 1e-6
    adv_eps: float | None = None  # None: eps
    adv_steps: int = 3
    adv_step_size: float | None = None  # None: 2.5 * adv_eps / adv_steps
    pgd_steps: int = 20
    step_size: float | None = None  # None: 2.5 * eps / pgd_steps
    target: str = "nearest"  # "nearest" centroid of another class, or "next" (y + 1 mod K)
    pgd_augment: str = "crop-flip"

    def validate(self):
        self.check_source("entf", ("pgd_steps",))
        if self.adv_steps < 0 or self.lr <= 0:
            raise UnlearnableError("entf: adv_steps must be non-negative and lr positive")
        if self.adv_eps is not None and not (0 <= self.adv_eps <= 1):
            raise UnlearnableError(f"entf: adv_eps must be in [0, 1], got {self.adv_eps}")
        for k in ("step_size", "adv_step_size"):
            if getattr(self, k) is not None and getattr(self, k) <= 0:
                raise UnlearnableError(f"entf: {k} must be positive")
        if self.target not in ("nearest", "next"):
            raise UnlearnableError(f"entf: target must be 'nearest' or 'next', got {self.target!r}")
        build_augment(self.pgd_augment, self.crop_padding)

    @property
    def radius(self) -> float:
        return self.eps if self.adv_eps is None else self.adv_eps


@torch.no_grad()
def class_centroids(run: SourceRun) -> torch.Tensor:
    """Mean source-model features of each class's clean images (K, D); eval mode."""
    run.model.eval()
    sums, counts = None, torch.zeros(run.num_classes, device=run.device)
    for idx in batches(len(run.data), max(256, run.cfg.batch_size), None, run.device):
        x, y = run.data.batch(idx)
        with autocast(run.device, run.cfg.bf16):
            z = run.model.features(to_model_input(x, run.cfg.channels_last)).float()
        if sums is None:
            sums = torch.zeros(run.num_classes, z.shape[1], device=run.device)
        sums.index_add_(0, y, z)
        counts += torch.bincount(y, minlength=run.num_classes).float()
    return sums / counts.clamp_min(1).unsqueeze(1)


def target_classes(centroids: torch.Tensor, counts: torch.Tensor, rule: str) -> torch.Tensor:
    """Target class of each class: the nearest other centroid among present classes, or y + 1."""
    k = centroids.shape[0]
    if rule == "next" or k < 2:
        return (torch.arange(k, device=centroids.device) + 1) % k
    dist = torch.cdist(centroids.double(), centroids.double())
    dist.fill_diagonal_(float("inf"))
    dist[:, counts == 0] = float("inf")
    return dist.argmin(1)


@register_attack
class ENTF(Attack):
    name = "entf"
    Config = ENTFConfig
    presets = {
        "cpu": ENTFConfig(crop_padding=2),  # 28 px embedded data (as mi-ue's cpu preset)
        "paper-cifar10": ENTFConfig(model="resnet-18", epochs=40, batch_size=128, adv_steps=10, pgd_steps=100),
    }

    def generate(self, train, *, seed: int = 0, workdir=None, resume: bool = False) -> AttackResult:
        cfg = self.config
        if train.num_classes < 2:
            raise UnlearnableError("entf: needs at least two classes")
        run = SourceRun(self.name, cfg, train, seed=seed, workdir=workdir, resume=resume,
                        schedule="cosine", schedule_epochs=cfg.epochs)
        aug = build_augment(cfg.pgd_augment, cfg.crop_padding)
        adv_step = cfg.adv_step_size or 2.5 * cfg.radius / max(1, cfg.adv_steps)
        step = cfg.step_size or 2.5 * cfg.eps / cfg.pgd_steps
        chosen = {}

        def update_factory(run):
            centroids = class_centroids(run)
            counts = torch.bincount(run.data.y, minlength=run.num_classes)
            targets = target_classes(centroids, counts, cfg.target)
            chosen["targets"] = targets.cpu().tolist()
            transform = (lambda t: aug(t, run.gen)) if aug is not None else None

            def update(x, y, d):
                goal = centroids[targets[y]]

                def loss_fn(inp):
                    with autocast(run.device, cfg.bf16):
                        z = run.model.features(to_model_input(inp, cfg.channels_last)).float()
                    return (z - goal).pow(2).sum(1).mean()
                return pgd(loss_fn, x, d, steps=cfg.pgd_steps, step_size=step, eps=cfg.eps, transform=transform)
            return update

        perturb = run.adversary(cfg.radius, cfg.adv_steps, adv_step) if cfg.adv_steps > 0 else None
        train_then_craft(run, epochs=cfg.epochs, augment=build_augment(cfg.train_augment, cfg.crop_padding),
                         update_factory=update_factory, perturb=perturb)
        return AttackResult(delta=run.final_delta(), info=run.info(**chosen))
