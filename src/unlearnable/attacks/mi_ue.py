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

import hashlib
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch

from ..data.augment import build_augment
from ..errors import UnlearnableError
from ..models import build_model
from ..progress import bar
from ..runtime import autocast, make_generator, prepare_model, resolve_device, seed_everything, to_model_input
from ..train.loops import TensorData, batches, num_batches, sgd_cosine, train_epoch
from .base import Attack, AttackResult, Checkpoint, check_eps, register_attack, rng_state, set_rng_state
from .losses import mi_loss
from .pgd import pgd


@dataclass
class MIUEConfig:
    model: str = "cnn"
    epochs: int = 10
    batch_size: int = 512
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 1e-4
    lr_min: float = 1e-6
    eps: float = 8 / 255
    pgd_steps: int = 10
    step_size: float = 0.8 / 255
    step_size_final: float | None = None  # anneal linearly per epoch to this (the official code's option)
    tau: float = 0.1
    zeta: float = 0.1
    distance_scale: str = "none"  # "none": the paper's Eq. 2; "dim": divide by the feature dimension
    train_augment: str = "crop-flip"  # source-model training
    pgd_augment: str = "none"  # expectation over transformations inside PGD
    crop_padding: int = 4
    forward_chunk: int = 128  # features computed in chunks (eval-mode BN: same result, better cache use)
    device: str = "auto"
    bf16: bool = False
    channels_last: bool = True

    def validate(self):
        check_eps(self.eps)
        for k in ("epochs", "batch_size", "pgd_steps", "forward_chunk"):
            if int(getattr(self, k)) <= 0:
                raise UnlearnableError(f"mi-ue: {k} must be positive, got {getattr(self, k)}")
        if self.step_size <= 0 or self.tau <= 0 or self.zeta < 0 or self.lr <= 0:
            raise UnlearnableError("mi-ue: step_size, tau and lr must be positive and zeta non-negative")
        if self.distance_scale not in ("none", "dim"):
            raise UnlearnableError(f"mi-ue: distance_scale must be 'none' or 'dim', got {self.distance_scale!r}")
        build_augment(self.train_augment, self.crop_padding)
        build_augment(self.pgd_augment, self.crop_padding)

    def step_at(self, epoch: int) -> float:
        if self.step_size_final is None or self.epochs == 1:
            return self.step_size
        return self.step_size + (self.step_size_final - self.step_size) * epoch / (self.epochs - 1)


def fingerprint(images: np.ndarray, labels: np.ndarray) -> str:
    h = hashlib.sha1()
    h.update(np.ascontiguousarray(images).tobytes())
    h.update(np.ascontiguousarray(labels).tobytes())
    return h.hexdigest()


# What determines the poisons (device and precision flags are excluded on purpose: a run
# may resume on another device).
_RUNTIME_KEYS = {"device", "bf16", "channels_last", "forward_chunk"}


@register_attack
class MIUE(Attack):
    name = "mi-ue"
    Config = MIUEConfig
    presets = {
        "paper-cifar10": MIUEConfig(model="resnet-18", epochs=100, batch_size=512, lr=0.5, step_size=0.2 / 255),
        "paper-cifar100": MIUEConfig(model="resnet-18", epochs=100, batch_size=512, lr=0.5, step_size=0.2 / 255),
        "paper-imagenet": MIUEConfig(model="resnet-18", epochs=50, batch_size=512, lr=0.5, step_size=0.4 / 255,
                                     train_augment="flip"),
        "cpu": MIUEConfig(),
    }

    def generate(self, train, *, seed: int = 0, workdir=None, resume: bool = False) -> AttackResult:
        cfg = self.config
        device = resolve_device(cfg.device)
        seed_everything(seed)
        gen = make_generator(seed)
        model = prepare_model(build_model(cfg.model, train.channels, train.num_classes, train.image_size[0]),
                              device, cfg.channels_last)
        opt, sched = sgd_cosine(model, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                                epochs=cfg.epochs, lr_min=cfg.lr_min)
        train_aug = build_augment(cfg.train_augment, cfg.crop_padding)
        pgd_aug = build_augment(cfg.pgd_augment, cfg.crop_padding)
        data = TensorData.from_dataset(train, device)
        delta = torch.zeros(data.x.shape, dtype=torch.float32, device=device)
        determining = {k: v for k, v in asdict(cfg).items() if k not in _RUNTIME_KEYS}
        fp = fingerprint(train.images, train.labels)
        ckpt = Checkpoint(workdir) if workdir is not None else None
        history: list[dict] = []
        start, elapsed = 0, 0.0
        if resume and ckpt is not None and ckpt.exists():
            state = ckpt.load()
            if state["config"] != determining or state["seed"] != seed or state["fingerprint"] != fp:
                raise UnlearnableError(f"{ckpt.path}: checkpoint was made with other data, config or seed; "
                                       f"rerun without --resume (or with --overwrite)")
            delta.copy_(state["delta"].to(device))
            model.load_state_dict(state["model"])
            opt.load_state_dict(state["optimizer"])
            sched.load_state_dict(state["scheduler"])
            set_rng_state(gen, state["rng"])
            start, history, elapsed = state["epoch"], list(state["history"]), state["elapsed"]

        dist_scale = 1.0 / model.feature_dim if cfg.distance_scale == "dim" else 1.0
        n_tr = num_batches(len(data), cfg.batch_size)
        t0 = time.time() - elapsed
        with bar(total=cfg.epochs * 2 * n_tr, initial=start * 2 * n_tr, desc="mi-ue", unit="batch") as pb:
            for epoch in range(start, cfg.epochs):
                # Source model: one pass of CE on the current poisons (min over theta).
                ce, acc = train_epoch(model, opt, data, batch_size=cfg.batch_size, generator=gen,
                                      augment=train_aug, delta=delta, bf16=cfg.bf16,
                                      channels_last=cfg.channels_last, on_batch=pb.update)
                sched.step()
                # Poisons: T_a signed-gradient steps on L_mi for every batch (min over delta).
                model.eval()
                step = cfg.step_at(epoch)
                mi_total = 0.0
                for idx in batches(len(data), cfg.batch_size, gen, device):
                    x, y = data.batch(idx)
                    last = []

                    def loss_fn(inp, y=y, last=last):
                        with autocast(device, cfg.bf16):
                            z = torch.cat([model.features(to_model_input(c, cfg.channels_last))
                                           for c in inp.split(cfg.forward_chunk)])
                        loss = mi_loss(z, y, tau=cfg.tau, zeta=cfg.zeta, distance_scale=dist_scale)
                        last[:] = [loss.detach()]
                        return loss

                    transform = (lambda t: pgd_aug(t, gen)) if pgd_aug is not None else None
                    delta[idx] = pgd(loss_fn, x, delta[idx], steps=cfg.pgd_steps, step_size=step,
                                     eps=cfg.eps, transform=transform)
                    mi_total += float(last[0]) * len(idx)
                    pb.update()
                history.append({"epoch": epoch + 1, "source_ce": round(ce, 5), "source_train_acc": round(acc, 5),
                                "mi_loss": round(mi_total / len(data), 5), "step_size_255": round(step * 255, 4),
                                "seconds": round(time.time() - t0, 2)})
                pb.set_postfix(acc=f"{acc:.3f}", mi=f"{mi_total / len(data):.3f}")
                if ckpt is not None:
                    ckpt.save({"epoch": epoch + 1, "delta": delta.cpu(), "model": model.state_dict(),
                               "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                               "rng": rng_state(gen), "history": history, "config": determining,
                               "seed": seed, "fingerprint": fp, "elapsed": time.time() - t0})
        info = {"history": history, "seconds": round(time.time() - t0, 2), "config": asdict(cfg),
                "resumed_from_epoch": start}
        return AttackResult(delta=delta.cpu(), info=info)
