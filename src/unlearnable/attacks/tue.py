"""TUE: transferable unlearnable examples (Ren, Xu, Wan, Ma, Sun and Tang, "Transferable
Unlearnable Examples", ICLR 2023).

A min-min problem on an unsupervised backbone (SimCLR here, as in the MI-UE paper's
comparison) plus the class-wise separability discriminant (CSD) of the perturbations:

    min_theta min_{||delta_i|| <= eps}  w_cl * NT-Xent(f_theta(T1(x + delta)), f_theta(T2(x + delta)))
                                        + lambda * CSD({delta_i, y_i})
    CSD = 1 / (K (K - 1)) * sum_{i != j} (sigma_i + sigma_j) / d(c_i, c_j)

with c_k the mean of class k's perturbations (flattened), sigma_k their mean Euclidean
distance to c_k and d the Euclidean distance between class means, all over the classes
present in a batch. Lowering CSD makes the perturbations linearly separable by class,
which is what makes them transfer to supervised victims; the contrastive term makes
them a shortcut for the SimCLR backbone.

Rounds, as in EM (and TUE's code): ``train_steps`` SimCLR batches of the backbone on
the current poisoned data (two views from
:class:`~unlearnable.data.contrastive.ContrastiveAugment`, NT-Xent), then one shuffled
pass over every poison with ``pgd_steps`` signed-gradient steps on the objective above
(backbone in eval mode, fresh views at every step), projected to the L-inf ball and the
pixel range. Checkpointed after every round; ``resume`` continues bit-identically.

Defaults from the paper and its released SimCLR setting: eps 8/255, 20 steps of
0.8/255, 20 backbone batches per round, batch 512, temperature 0.5, projection to 128,
Adam (lr 1e-3, weight decay 1e-6) for the backbone, lambda (``csd_weight``) 0.1,
sample-wise poisons started uniform in [-eps, eps], 40 passes over CIFAR-10 (200
rounds in ``paper-cifar10``). Our choices: ``contrastive_weight`` 1 (the paper's
objective; the released SimCLR script sets it to 0 and optimises the poisons on CSD
alone); the CSD gradient flows through both the spreads and the centre distances (the
released code detaches the spreads); a small constant inside the square roots keeps
the distance gradients finite when two class means coincide; the augmentations are
applied to x + delta (the paper's T(x + delta)), not added after them.
The ``cpu`` preset: the 4-conv CNN, 5 rounds of 10 backbone batches and 5 steps of
1.6/255 (about the compute of MI-UE's ``cpu`` preset: a round costs about two MI-UE
epochs).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from ..data.contrastive import ContrastiveAugment
from ..errors import UnlearnableError
from ..models import build_model
from ..progress import bar
from ..runtime import make_generator, prepare_model, resolve_device, seed_everything
from ..train.loops import TensorData, batches, num_batches
from ..train.simclr import SimCLRNet, contrastive_loss, simclr_steps
from .base import Attack, AttackResult, SourceConfig, register_attack, rng_state, set_rng_state
from .pgd import pgd
from .source import RunRecord


def class_separability(delta: torch.Tensor, y: torch.Tensor, num_classes: int, tiny: float = 1e-12) -> torch.Tensor:
    """TUE's class-wise separability discriminant of perturbations ``delta`` (B, ...) with
    labels ``y``, over the classes present (0 when fewer than two are)."""
    flat = delta.reshape(len(delta), -1).float()
    onehot = torch.nn.functional.one_hot(y, num_classes).float()  # (B, K)
    count = onehot.sum(0)
    present = count > 0
    if int(present.sum()) < 2:
        return flat.sum() * 0.0
    centres = (onehot.t() @ flat)[present] / count[present, None]  # (P, D)
    own = centres[torch.cumsum(present.long(), 0)[y] - 1]  # each sample's class mean
    dist_to_centre = ((flat - own).pow(2).sum(1) + tiny).sqrt()
    spread = (onehot[:, present].t() @ dist_to_centre) / count[present]  # (P,)
    gap = ((centres[:, None] - centres[None]).pow(2).sum(-1) + tiny).sqrt()  # (P, P)
    off = ~torch.eye(len(centres), dtype=torch.bool, device=flat.device)
    return ((spread[:, None] + spread[None]) / gap)[off].mean()


@dataclass
class TUEConfig(SourceConfig):
    epochs: int = 5  # rounds: train_steps backbone batches, then one pass over the poisons
    train_steps: int = 10
    batch_size: int = 512
    lr: float = 1e-3  # Adam, for the SimCLR backbone
    weight_decay: float = 1e-6
    pgd_steps: int = 5
    step_size: float = 1.6 / 255
    temperature: float = 0.5
    proj_dim: int = 128
    contrastive_weight: float = 1.0
    csd_weight: float = 0.1
    init: str = "uniform"  # "uniform" in [-eps, eps] (TUE's random start) or "zero"
    crop_scale_min: float | None = None  # contrastive augmentation; None: by image size
    strength: float | None = None

    def validate(self):
        self.check_source("tue", ("train_steps", "pgd_steps", "proj_dim"))
        if self.batch_size < 2:
            raise UnlearnableError("tue: batch_size must be at least 2 (negatives come from the batch)")
        if self.step_size <= 0 or self.lr <= 0 or self.temperature <= 0:
            raise UnlearnableError("tue: step_size, lr and temperature must be positive")
        if self.contrastive_weight < 0 or self.csd_weight < 0 or self.contrastive_weight + self.csd_weight == 0:
            raise UnlearnableError("tue: contrastive_weight and csd_weight must be non-negative, not both 0")
        if self.init not in ("uniform", "zero"):
            raise UnlearnableError(f"tue: init must be 'uniform' or 'zero', got {self.init!r}")


@register_attack
class TUE(Attack):
    name = "tue"
    Config = TUEConfig
    presets = {
        "cpu": TUEConfig(),
        "paper-cifar10": TUEConfig(model="resnet-18", epochs=200, train_steps=20, batch_size=512, pgd_steps=20,
                                   step_size=0.8 / 255),
    }

    def generate(self, train, *, seed: int = 0, workdir=None, resume: bool = False) -> AttackResult:
        cfg = self.config
        device = resolve_device(cfg.device)
        seed_everything(seed)
        gen = make_generator(seed)
        backbone = build_model(cfg.model, train.channels, train.num_classes, train.image_size[0])
        net = prepare_model(SimCLRNet(backbone, cfg.proj_dim), device, cfg.channels_last)
        opt = torch.optim.Adam(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        augment = ContrastiveAugment.for_images(train, crop_scale_min=cfg.crop_scale_min, strength=cfg.strength)
        data = TensorData.from_dataset(train, device)
        delta = torch.zeros(data.x.shape, dtype=torch.float32, device=device)
        batch_size = min(cfg.batch_size, len(data))

        record = RunRecord(self.name, cfg, train, seed=seed, workdir=workdir, resume=resume)
        start, history = 0, []
        if record.state is not None:
            state = record.state
            delta.copy_(state["delta"].to(device))
            net.load_state_dict(state["model"])
            opt.load_state_dict(state["optimizer"])
            set_rng_state(gen, state["rng"])
            start, history = state["epoch"], list(state["history"])
        elif cfg.init == "uniform":
            delta.copy_(((torch.rand(delta.shape, generator=gen) * 2 - 1) * cfg.eps).to(device))
            delta.copy_((data.x.float() / 255 + delta).clamp_(0, 1) - data.x.float() / 255)

        def objective(x, y):
            def loss_fn(inp):
                loss = cfg.csd_weight * class_separability(inp - x, y, train.num_classes)
                if cfg.contrastive_weight > 0:
                    loss = loss + cfg.contrastive_weight * contrastive_loss(
                        net, inp, augment, gen, temperature=cfg.temperature, bf16=cfg.bf16,
                        channels_last=cfg.channels_last)
                last[:] = [loss.detach()]
                return loss
            last: list = []
            return loss_fn, last

        per_round = cfg.train_steps + num_batches(len(data), batch_size)
        with bar(total=cfg.epochs * per_round, initial=start * per_round, desc=self.name, unit="batch") as pb:
            for rnd in range(start, cfg.epochs):
                cl = simclr_steps(net, opt, data, augment, gen, steps=cfg.train_steps, batch_size=batch_size,
                                  temperature=cfg.temperature, delta=delta, bf16=cfg.bf16,
                                  channels_last=cfg.channels_last, on_batch=pb.update)
                net.eval()
                total = 0.0
                for idx in batches(len(data), batch_size, gen, device):
                    x, y = data.batch(idx)
                    loss_fn, last = objective(x, y)
                    delta[idx] = pgd(loss_fn, x, delta[idx], steps=cfg.pgd_steps, step_size=cfg.step_size,
                                     eps=cfg.eps)
                    total += float(last[0]) * len(idx)
                    pb.update()
                history.append({"epoch": rnd + 1, "contrastive_loss": round(cl, 5),
                                "poison_loss": round(total / len(data), 5), "seconds": record.seconds()})
                pb.set_postfix(cl=f"{cl:.3f}")
                record.save({"epoch": rnd + 1, "delta": delta.cpu(), "model": net.state_dict(),
                             "optimizer": opt.state_dict(), "rng": rng_state(gen), "history": history})
        return AttackResult(delta=delta.cpu(), info={"history": history, "seconds": record.seconds(),
                                                     "config": asdict(cfg), "resumed_from_epoch": start})
