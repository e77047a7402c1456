"""MI-UE: Mutual Information Unlearnable Examples (Zhu et al., arXiv:2603.03725, 2026).

Algorithm 1 (Appendix D): a min-min loop. Each epoch trains a source model for one pass
with cross-entropy on the current poisoned data, then updates every poison by PGD on the
MI-reduction loss of Eq. 2 (:mod:`.losses`), projecting to the L-inf ball and the valid
pixel range. Defaults from the paper (Section 6.1, Appendix E.4): 100 epochs on CIFAR,
10 PGD steps of 0.2/255, eps 8/255, batch 512, SGD lr 0.5, momentum 0.9, wd 1e-4,
cosine to 1e-6, tau 0.1, zeta 0.1, crop+flip augmentation during generation.

The ``cpu`` preset is the embedded-data default (see docs/mi-ue.md for how it was chosen).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..data.augment import build_augment
from ..errors import UnlearnableError
from ..progress import bar
from ..runtime import autocast, to_model_input
from ..train.loops import num_batches
from .base import Attack, AttackResult, ClassifierSourceConfig, register_attack
from .losses import mi_loss
from .pgd import pgd
from .source import SourceRun


@dataclass
class MIUEConfig(ClassifierSourceConfig):
    batch_size: int = 512
    weight_decay: float = 1e-4
    lr_min: float = 1e-6
    pgd_steps: int = 5  # T_a: signed-gradient steps per poison batch
    source_steps: int | None = None  # T_theta: source SGD batches per epoch (None: one full pass)
    step_size: float = 1.6 / 255
    step_size_final: float | None = None  # anneal linearly per epoch to this (the official code's option)
    tau: float = 0.1
    zeta: float = 0.1
    distance_scale: str = "none"  # "none": the paper's Eq. 2; "dim": divide by the feature dimension
    balanced_batches: bool = False  # poison batches hold every class in proportion (the ablation, docs/mi-ue.md)
    train_augment: str = "none"  # source-model training (CPU default matches the CPU victim; paper: crop-flip)
    pgd_augment: str = "none"  # expectation over transformations inside PGD
    crop_padding: int = 2  # 4 is the CIFAR (32 px) setting; 2 suits 28 px images
    forward_chunk: int = 128  # features computed in chunks (eval-mode BN: same result, better cache use)
    # DDP: each batch split over this many shards (unlearnable.sharding; torchrun sets it to the
    # world size, and one process with the same value reproduces a 2-rank run bit for bit); 1: plain run.
    shards: int = 1

    def validate(self):
        self.check_source("mi-ue", ("pgd_steps", "forward_chunk", "shards"))
        if self.source_steps is not None and self.source_steps <= 0:
            raise UnlearnableError(f"mi-ue: source_steps must be positive or None, got {self.source_steps}")
        if self.step_size <= 0 or self.tau <= 0 or self.zeta < 0 or self.lr <= 0:
            raise UnlearnableError("mi-ue: step_size, tau and lr must be positive and zeta non-negative")
        if self.distance_scale not in ("none", "dim"):
            raise UnlearnableError(f"mi-ue: distance_scale must be 'none' or 'dim', got {self.distance_scale!r}")
        build_augment(self.pgd_augment, self.crop_padding)

    def step_at(self, epoch: int) -> float:
        if self.step_size_final is None or self.epochs == 1:
            return self.step_size
        return self.step_size + (self.step_size_final - self.step_size) * epoch / (self.epochs - 1)


def mi_pgd(model, cfg: MIUEConfig, x: torch.Tensor, y: torch.Tensor, delta: torch.Tensor, *, step: float,
           transform=None, gather=None, dist_scale: float = 1.0) -> tuple[torch.Tensor, torch.Tensor, int]:
    """MI-UE's poison update for one batch: ``cfg.pgd_steps`` signed-gradient steps of size
    ``step`` on the MI-reduction loss (Eq. 2) of ``model.features`` (eval mode: the caller's
    job), projected to ``cfg.eps``. Returns the new ``delta``, the last step's loss (detached: the
    caller decides when to sync) and the number of samples that loss saw.

    ``transform`` maps ``x + delta`` to the model's input and ``y`` labels that input (a
    caller may append unperturbed images, as protect does); ``gather(z, y)`` is the DDP
    hook that returns the whole batch's features and labels.
    """
    last = []

    def loss_fn(inp):
        with autocast(inp.device, cfg.bf16):
            z = torch.cat([model.features(to_model_input(c, cfg.channels_last)) for c in inp.split(cfg.forward_chunk)])
        zb, yb = gather(z, y) if gather is not None else (z, y)
        loss = mi_loss(zb, yb, tau=cfg.tau, zeta=cfg.zeta, distance_scale=dist_scale)
        last[:] = [loss.detach(), len(yb)]
        return loss

    new = pgd(loss_fn, x, delta, steps=cfg.pgd_steps, step_size=step, eps=cfg.eps, transform=transform)
    return new, last[0], last[1]


def min_min_epoch(run: SourceRun, epoch: int, *, train_aug, train_delta, update_poisons,
                  on_batch=None) -> tuple[float, float, float]:
    """One epoch of Algorithm 1 on ``run`` (its config a :class:`MIUEConfig`): the source
    model takes T_theta batches of cross-entropy on ``train_delta()`` (one full pass when
    ``source_steps`` is None; min over theta), its schedule steps, and with the model in
    eval mode ``update_poisons(step)`` moves the poisons by PGD on L_mi (min over delta),
    ``step`` being this epoch's step size. Returns the source CE, its train accuracy and
    ``step``.

    The two hooks are what differs between callers: :class:`MIUE` trains on its
    perturbation and updates every batch of it with :func:`mi_pgd`; protect trains on what its working
    resolution sees of the user images and fills each PGD batch with reference images.
    """
    cfg = run.cfg
    if cfg.source_steps is None:
        ce, acc = run.train_pass(train_aug, delta=train_delta(), on_batch=on_batch)
    else:
        ce, acc = run.train_steps(cfg.source_steps, train_aug, delta=train_delta(), on_batch=on_batch)
    run.sched.step()
    run.model.eval()
    step = cfg.step_at(epoch)
    update_poisons(step)
    return ce, acc, step


@register_attack
class MIUE(Attack):
    name = "mi-ue"
    Config = MIUEConfig
    presets = {
        "paper-cifar10": MIUEConfig(model="resnet-18", epochs=100, batch_size=512, lr=0.5, pgd_steps=10,
                                    step_size=0.2 / 255, train_augment="crop-flip", crop_padding=4),
        "paper-cifar100": MIUEConfig(model="resnet-18", epochs=100, batch_size=512, lr=0.5, pgd_steps=10,
                                     step_size=0.2 / 255, train_augment="crop-flip", crop_padding=4),
        "paper-imagenet": MIUEConfig(model="resnet-18", epochs=50, batch_size=512, lr=0.5, pgd_steps=10,
                                     step_size=0.4 / 255, train_augment="flip"),
        "cpu": MIUEConfig(),
    }

    def augmentations(self, train):
        """The (source-model training, inside-PGD) augmentations: ``fn(x, generator)`` or None.
        A hook for variants that change them (A-MI-UE)."""
        cfg = self.config
        return build_augment(cfg.train_augment, cfg.crop_padding), build_augment(cfg.pgd_augment, cfg.crop_padding)

    def generate(self, train, *, seed: int = 0, workdir=None, resume: bool = False) -> AttackResult:
        cfg = self.config
        run = SourceRun(self.name, cfg, train, seed=seed, workdir=workdir, resume=resume,
                        schedule="cosine", schedule_epochs=cfg.epochs)
        model, gen, data, delta = run.model, run.gen, run.data, run.perturbation
        train_aug, pgd_aug = self.augmentations(train)
        start, history = run.start, run.history

        dist_scale = 1.0 / model.feature_dim if cfg.distance_scale == "dim" else 1.0
        transform = (lambda t: pgd_aug(t, gen)) if pgd_aug is not None else None
        n_tr = num_batches(len(data), cfg.batch_size)
        per_epoch = n_tr + (n_tr if cfg.source_steps is None else cfg.source_steps)
        with bar(total=cfg.epochs * per_epoch, initial=start * per_epoch, desc=self.name, unit="batch") as pb:
            for epoch in range(start, cfg.epochs):
                mi_total = [0.0]

                def update_poisons(step, mi_total=mi_total):
                    def update(x, y, d):
                        new, loss, n = mi_pgd(model, cfg, x, y, d, step=step, transform=transform,
                                              gather=run.gather_batch, dist_scale=dist_scale)
                        mi_total[0] += float(loss) * n
                        return new
                    run.update_poisons(update, on_batch=pb.update, balanced=cfg.balanced_batches)

                ce, acc, step = min_min_epoch(run, epoch, train_aug=train_aug, train_delta=lambda: delta,
                                              update_poisons=update_poisons, on_batch=pb.update)
                mi_mean = mi_total[0] / len(data)
                history.append({"epoch": epoch + 1, "source_ce": round(ce, 5), "source_train_acc": round(acc, 5),
                                "mi_loss": round(mi_mean, 5), "step_size_255": round(step * 255, 4),
                                "seconds": run.seconds()})
                pb.set_postfix(acc=f"{acc:.3f}", mi=f"{mi_mean:.3f}")
                run.save(epoch + 1)
        return AttackResult(delta=delta.cpu(), info=run.info())
