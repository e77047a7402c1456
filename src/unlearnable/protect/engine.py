"""MI-UE for a batch of a user's images against a reference set, at the working resolution.

One *unit* (``unit_size`` user images, 64 by default) is optimised at a time, with its
own source model, so that a finished unit can be written and forgotten: memory stays
bounded, Ctrl-C loses at most the unit in flight, and each unit's result depends only on
its images, the reference subset, the settings and the seed.

The loop is MI-UE's min-min (Zhu et al., arXiv:2603.03725, Algorithm 1) built from the
attack's own pieces: :class:`~unlearnable.attacks.source.SourceRun` (seeding, source model,
cosine SGD, the training pass), :class:`~unlearnable.attacks.mi_ue.MIUEConfig` (learning
rate, tau, zeta, the step schedule and their validation) and
:func:`~unlearnable.attacks.mi_ue.mi_pgd` (PGD on the MI-reduction loss of Eq. 2). Each epoch:

1. one pass of cross-entropy SGD of the source model on user + reference images, the
   user images carrying ``seen(delta)`` (what the working-resolution view of the
   full-resolution result contains of the perturbation, see :mod:`.resample`);
2. with the model in eval mode, the user images in chunks of at most half a minibatch,
   each chunk filled up with reference images drawn at random, get ``steps`` signed
   gradient steps on the MI loss of the whole minibatch; only user perturbations move
   (the reference is never perturbed), projected to [-eps, eps].

Choices where the paper is silent (it perturbs whole datasets at their own resolution):
the working resolution, the unit size, the reference mix in PGD minibatches, grey images
in a colour unit (their perturbation is one value per pixel, replicated to the three
channels: the channel mean is taken before ``seen``), and the strength presets, which
trade budget against CPU time and were not tuned on real photos:

========  ==========  =========  ======  ===========================
strength  eps (/255)  PGD steps  epochs  step size
========  ==========  =========  ======  ===========================
low       4           5          5       eps / 5
mid       8           5          10      eps / 5 (the CPU MI-UE preset)
high      12          10         20      eps / 5
========  ==========  =========  ======  ===========================

mid uses the paper's budget (8/255) and the schedule of the package's ``cpu`` MI-UE
preset (5 steps of 1.6/255 per epoch, 10 epochs); high adds budget and epochs, low halves them.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import torch

from ..attacks.base import check_eps
from ..attacks.mi_ue import MIUEConfig, mi_pgd, min_min_epoch
from ..attacks.source import RUNTIME_KEYS, SourceRun
from ..data.augment import build_augment
from ..data.dataset import ImageDataset
from ..errors import UnlearnableError
from ..options import with_overrides

STRENGTHS = {
    "low": {"eps": 4 / 255, "steps": 5, "epochs": 5},
    "mid": {"eps": 8 / 255, "steps": 5, "epochs": 10},
    "high": {"eps": 12 / 255, "steps": 10, "epochs": 20},
}


@dataclass
class ProtectConfig:
    """Everything that determines the protected pixels (plus runtime flags that do not)."""

    strength: str = "mid"
    eps: float = 8 / 255
    steps: int = 5  # PGD steps per chunk and epoch
    epochs: int = 10  # min-min epochs per unit
    step_size: float | None = None  # None: eps / 5
    unit_size: int = 64  # user images per unit (optimised together, written together)
    working_size: int = 32  # side of the square working resolution
    reference_per_class: int = 200
    minibatch: int = 256  # source-model SGD and PGD minibatch (user + reference images)
    model: str = "cnn"
    device: str = "auto"
    bf16: bool = False
    channels_last: bool = True

    def validate(self) -> "ProtectConfig":
        check_eps(self.eps)
        for k in ("steps", "epochs", "unit_size", "reference_per_class"):
            if int(getattr(self, k)) <= 0:
                raise UnlearnableError(f"protect: {k} must be positive, got {getattr(self, k)}")
        if self.working_size < 8:
            raise UnlearnableError(f"protect: working size must be at least 8 pixels, got {self.working_size}")
        if self.minibatch < 2:
            raise UnlearnableError("protect: the minibatch must hold at least 2 images")
        if self.eps_255 < 1:
            raise UnlearnableError(f"protect: eps {self.eps * 255:.3f}/255 is below one level: nothing would change")
        self.miue().validate()
        return self

    @property
    def eps_255(self) -> int:
        """The budget in whole levels (final pixels are integers)."""
        return int(np.floor(self.eps * 255 + 1e-6))

    def miue(self) -> MIUEConfig:
        """The MI-UE settings of the source-model loop (paper defaults for the rest)."""
        return MIUEConfig(model=self.model, epochs=self.epochs, batch_size=self.minibatch, eps=self.eps,
                          pgd_steps=self.steps, step_size=self.step_size or self.eps / 5, device=self.device,
                          bf16=self.bf16, channels_last=self.channels_last)

    def determining(self) -> dict:
        """The settings that decide the output (device and precision flags excluded)."""
        d = {k: v for k, v in dataclasses.asdict(self).items() if k not in RUNTIME_KEYS and k != "strength"}
        d["miue"] = {k: v for k, v in dataclasses.asdict(self.miue()).items() if k not in RUNTIME_KEYS}
        return d


def make_config(strength: str = "mid", **overrides) -> ProtectConfig:
    """A strength preset with ``overrides`` (those at ``NOT_GIVEN`` keep the preset's), validated."""
    if strength not in STRENGTHS:
        raise UnlearnableError(f"unknown strength {strength!r}; choose from {', '.join(STRENGTHS)}")
    base = ProtectConfig(strength=strength, **STRENGTHS[strength])
    return with_overrides("protect", base, overrides).validate()


@dataclass
class Unit:
    """One unit's user images at the working resolution."""

    x: np.ndarray  # uint8 (U, S, S, C)
    labels: np.ndarray  # int64 (U,), 0..k-1 (reference classes follow)
    grey: np.ndarray  # bool (U,): one perturbation value per pixel
    seen_h: np.ndarray  # float (U, S, S)
    seen_w: np.ndarray  # float (U, S, S)


def optimise_unit(unit: Unit, ref_x: np.ndarray, ref_y: np.ndarray, num_classes: int, cfg: ProtectConfig, *,
                  seed: int, on_epoch=None) -> np.ndarray:
    """MI-UE perturbations (U, S, S, C) float32 in [-eps, eps] for ``unit``.

    ``ref_x`` uint8 (R, S, S, C) and ``ref_y`` (labels after the unit's classes) are the
    reference images; ``num_classes`` counts user and reference classes. Each epoch is
    MI-UE's own :func:`~unlearnable.attacks.mi_ue.min_min_epoch` on a
    :class:`~unlearnable.attacks.source.SourceRun`, with :func:`~unlearnable.attacks.mi_ue.mi_pgd`
    as the poison update; protect's own are the two hooks: which images carry a
    perturbation and how the working resolution sees it.
    """
    mcfg = cfg.miue()
    images = ImageDataset(np.concatenate([unit.x, ref_x]), np.concatenate([unit.labels, ref_y]),
                          [str(k) for k in range(num_classes)], source="protect unit")
    run = SourceRun("protect", mcfg, images, seed=seed, schedule="cosine", schedule_epochs=mcfg.epochs)
    model, gen, data, device = run.model, run.gen, run.data, run.device
    train_aug = build_augment(mcfg.train_augment, mcfg.crop_padding)
    n_user, n_ref = len(unit.x), len(ref_x)
    seen_h = torch.from_numpy(unit.seen_h).float().to(device)
    seen_w = torch.from_numpy(unit.seen_w).float().to(device)
    grey = torch.from_numpy(unit.grey).to(device).view(-1, 1, 1, 1)

    def seen(d, rows):
        d = torch.where(grey[rows], d.mean(1, keepdim=True).expand_as(d), d)
        return torch.einsum("bij,bcjk,blk->bcil", seen_h[rows], d, seen_w[rows])

    delta = torch.zeros((n_user, *data.x.shape[1:]), device=device)
    full = run.perturbation  # what the source model trains on: seen(delta) on the user rows, zero on the reference
    everyone = torch.arange(n_user, device=device)
    chunk = max(1, mcfg.batch_size // 2)

    def train_delta():  # the source model sees what the working resolution shows of the user's perturbation
        full[:n_user] = seen(delta, everyone)
        return full

    def update_poisons(step):  # user images in chunks, each PGD batch filled up with reference images
        for rows in everyone.split(chunk):
            take = min(n_ref, mcfg.batch_size - len(rows))
            pick = n_user + torch.randperm(n_ref, generator=gen)[:take].to(device)
            xu, _ = data.batch(rows)
            xr, yr = data.batch(pick)

            def transform(inp, rows=rows, xu=xu, xr=xr):
                return torch.cat([(xu + seen(inp - xu, rows)).clamp(0, 1), xr])

            delta[rows], _, _ = mi_pgd(model, mcfg, xu, torch.cat([data.y[rows], yr]), delta[rows], step=step,
                                       transform=transform)

    for epoch in range(mcfg.epochs):
        min_min_epoch(run, epoch, train_aug=train_aug, train_delta=train_delta, update_poisons=update_poisons)
        if on_epoch is not None:
            on_epoch(epoch + 1)
    delta = torch.where(grey, delta.mean(1, keepdim=True).expand_as(delta), delta)
    return delta.permute(0, 2, 3, 1).contiguous().cpu().numpy()
