"""MI-UE-G: MI-UE's min-min game with a perturbation *generator* in place of per-sample PGD.

Same two players and losses as MI-UE (:mod:`.mi_ue`): the source model minimises the
cross-entropy on the poisoned images, the poisons minimise the MI-reduction loss of
Eq. 2 (:mod:`.losses`) on the source model's features. What changes is how a poison is
parametrised: ``delta = eps * G(x, y)``, one encoder-decoder network for the whole set
(GUE's :class:`~.generator.PerturbationGenerator`, its output in (-1, 1) through tanh) with a
learned class embedding at the bottleneck. Each batch takes one source SGD step on the
detached poisons, then one generator step on ``L_mi`` through the source model in eval
mode (BatchNorm running statistics, as MI-UE's PGD uses).

Why a generator: per-sample PGD gives every image its own free perturbation, so the
pattern it finds against one source model is free to be idiosyncratic; a shared network
with a class input can only produce perturbations that are a smooth function of the image
and its class, which is what a victim trained from scratch picks up first (the docs'
ablation, docs/mi-ue.md, measures this against the paper's algorithm). Not the paper's
algorithm: ``mi-ue`` stays that.

``partner_weight`` (off in every preset) adds a targeted term for fully connected victims,
which L_mi on a CNN source barely reaches: the cross-entropy of a frozen clean-trained 2-NN
towards each class's nearest class (:mod:`.partners`; measured in docs/mi-ue.md).
``partner_refine_steps`` (also off) lowers the same cross-entropy image by image with PGD
after the game, from the generator's poisons.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from ..data.augment import build_augment
from ..errors import UnlearnableError
from ..models import check_model_name
from ..progress import bar
from ..runtime import autocast, prepare_model, to_model_input
from ..train.loops import batches, num_batches
from .base import Attack, AttackResult, ClassifierSourceConfig, register_attack
from .generator import PerturbationGenerator, generator_image, generator_poisons
from .losses import mi_loss
from .partners import class_means, clean_trained_model, nearest_partners, refine_towards_partners
from .source import SourceRun


@dataclass
class MIUEGenConfig(ClassifierSourceConfig):
    batch_size: int = 128
    weight_decay: float = 1e-4
    lr_min: float = 1e-6
    gen_lr: float = 1e-2  # generator Adam (1e-3 was weaker on both validation seeds, docs/mi-ue.md)
    gen_width: int = 16
    gen_levels: int = 2
    label_input: bool = True
    class_maps: bool = False  # a learned full-resolution pattern per class added before the tanh
    tau: float = 0.1
    zeta: float = 0.1
    distance_scale: str = "none"
    source_restart_epochs: int = 0  # > 0: a freshly initialised source model every that many epochs
    balanced_batches: bool = False  # every batch holds each class in proportion (the ablation, docs/mi-ue.md)
    gen_steps: int = 1  # generator Adam steps per source step, each on the same batch
    gen_ema: float = 0.0  # > 0: the poisons come from an exponential moving average of the generator, this decay
    gen_ce: float = 0.0  # > 0: the generator also minimises this weight x the source's CE on the poisons (GUE's loss)
    restarts: int = 1  # > 1: that many games from distinct seeds, keeping the one whose last epoch had the lowest L_mi
    # > 0: the generator also minimises this weight x the within-class share of the batch's perturbation
    # energy (1 - the class-mean share), pushing each class towards one pattern (docs/mi-ue.md, the sinks)
    class_consistency: float = 0.0
    interval_output: bool = False  # tanh mapped onto each pixel's feasible interval, not added and clipped (generator.interval_poison)
    # > 0: the generator also minimises this weight x the cross-entropy, towards each class's
    # nearest class (partners.nearest_partners), of partner_model trained partner_epochs epochs
    # on the clean images: a term aimed at the fully connected victims (docs/mi-ue.md)
    partner_weight: float = 0.0
    partner_model: str = "2-nn"
    partner_epochs: int = 100
    # > 0: after the game, that many per-image PGD steps on the same partner cross-entropy,
    # from the generator's poisons (partners.refine_towards_partners; docs/mi-ue.md)
    partner_refine_steps: int = 0
    train_augment: str = "none"
    crop_padding: int = 2

    def validate(self):
        self.check_source("mi-ue-g", ("gen_width", "gen_levels"))
        if min(self.lr, self.gen_lr, self.tau) <= 0 or self.zeta < 0:
            raise UnlearnableError("mi-ue-g: lr, gen_lr and tau must be positive and zeta non-negative")
        if self.distance_scale not in ("none", "dim"):
            raise UnlearnableError(f"mi-ue-g: distance_scale must be 'none' or 'dim', got {self.distance_scale!r}")
        if self.source_restart_epochs < 0:
            raise UnlearnableError(f"mi-ue-g: source_restart_epochs must be >= 0, got {self.source_restart_epochs}")
        if self.gen_steps < 1 or not 0 <= self.gen_ema < 1 or self.gen_ce < 0:
            raise UnlearnableError(f"mi-ue-g: gen_steps must be >= 1, gen_ema in [0, 1) and gen_ce >= 0, "
                                   f"got {self.gen_steps}, {self.gen_ema} and {self.gen_ce}")
        if self.class_consistency < 0:
            raise UnlearnableError(f"mi-ue-g: class_consistency must be >= 0, got {self.class_consistency}")
        if self.restarts < 1:
            raise UnlearnableError(f"mi-ue-g: restarts must be >= 1, got {self.restarts}")
        if self.partner_weight < 0 or self.partner_epochs < 1 or self.partner_refine_steps < 0:
            raise UnlearnableError(f"mi-ue-g: partner_weight and partner_refine_steps must be >= 0 and "
                                   f"partner_epochs >= 1, got {self.partner_weight}, "
                                   f"{self.partner_refine_steps} and {self.partner_epochs}")
        try:
            check_model_name(self.partner_model)
        except UnlearnableError as e:
            raise UnlearnableError(f"mi-ue-g: partner_model: {e}") from None
        if self.class_maps and not self.label_input:
            raise UnlearnableError("mi-ue-g: class_maps needs label_input")


def within_class_share(delta: torch.Tensor, y: torch.Tensor, num_classes: int) -> torch.Tensor:
    """The share of the batch's perturbation energy that is not its class's mean pattern:
    sum_i |d_i - mean_{y_i}|^2 / sum_i |d_i|^2, 0 for a class-wise pattern, near 1 for noise."""
    flat = delta.flatten(1).float()
    means = class_means(flat, y, num_classes)
    return ((flat - means[y]) ** 2).sum() / (flat ** 2).sum().clamp(min=1e-12)


RESTART_SEED_STRIDE = 1_000_003  # restart r plays from seed + r * this: distinct from every plain seed in use


@register_attack
class MIUEGen(Attack):
    name = "mi-ue-g"
    Config = MIUEGenConfig
    presets = {"cpu": MIUEGenConfig()}

    def generate(self, train, *, seed: int = 0, workdir=None, resume: bool = False) -> AttackResult:
        """``restarts`` games (the first from ``seed`` itself, so one restart is the plain
        game); the poisons of the one that ended with the lowest epoch-mean L_mi are kept.
        The game's own objective picks, as PGD's random restarts keep the best loss: no
        victim and no held-out image is used. Each restart checkpoints in its own folder
        (the first in ``workdir``), so a resume continues where the run was killed."""
        seeds = [seed + r * RESTART_SEED_STRIDE for r in range(self.config.restarts)]
        folders = [workdir if r == 0 or workdir is None else Path(workdir) / f"restart-{r}" for r in range(len(seeds))]
        games = [self._play(train, seed=s, workdir=w, resume=resume) for s, w in zip(seeds, folders)]
        if len(games) == 1:
            return games[0]
        losses = [g.info["history"][-1]["mi_loss"] for g in games]
        k = min(range(len(games)), key=losses.__getitem__)  # the first on ties
        runs = [{"seed": s, "final_mi_loss": loss} for s, loss in zip(seeds, losses)]
        return AttackResult(delta=games[k].delta, info={**games[k].info, "restarts": runs, "kept_restart": k})

    def _play(self, train, *, seed: int, workdir, resume: bool) -> AttackResult:
        """One min-min game from ``seed``: the trained generator's poisons of every image."""
        cfg = self.config
        restart = cfg.source_restart_epochs
        partner_net = None
        if cfg.partner_weight or cfg.partner_refine_steps:  # before the game's SourceRun, which seeds its streams
            partner_net = clean_trained_model(f"{self.name} partner source", cfg, train, seed=seed,
                                              model=cfg.partner_model, epochs=cfg.partner_epochs)
        run = SourceRun(self.name, cfg, train, seed=seed, workdir=workdir, resume=resume, schedule="cosine",
                        schedule_epochs=restart or cfg.epochs)
        model, device, data = run.model, run.device, run.data
        net = prepare_model(PerturbationGenerator(train.channels, cfg.gen_width, cfg.gen_levels,
                                                  train.num_classes if cfg.label_input else None,
                                                  train.image_size if cfg.class_maps else None),
                            device, cfg.channels_last)
        gen_params = list(net.parameters())
        opt_gen = torch.optim.Adam(gen_params, lr=cfg.gen_lr)
        # The averaged copy writes the poisons; it is what the last steps of Adam at a high rate
        # jitter around (BatchNorm's running statistics averaged with the weights).
        ema = (AveragedModel(net, multi_avg_fn=get_ema_multi_avg_fn(cfg.gen_ema), use_buffers=True)
               if cfg.gen_ema else None)
        if run.start:
            net.load_state_dict(run.extra["generator"])
            opt_gen.load_state_dict(run.extra["opt_generator"])
            if ema is not None:
                ema.load_state_dict(run.extra["generator_ema"])
        augment = build_augment(cfg.train_augment, cfg.crop_padding)
        dist_scale = 1.0 / model.feature_dim if cfg.distance_scale == "dim" else 1.0
        partner = None if partner_net is None else nearest_partners(data.x, data.y, train.num_classes)

        def poison(x, y):
            t = net(to_model_input(x, cfg.channels_last), y if cfg.label_input else None)
            return generator_image(x, t, cfg.eps, cfg.interval_output)

        n_b = num_batches(len(data), cfg.batch_size)
        with bar(total=cfg.epochs * n_b, initial=run.start * n_b, desc=self.name, unit="batch") as pb:
            for epoch in range(run.start, cfg.epochs):
                if restart and epoch and epoch % restart == 0:
                    # a fresh source, as a victim's first epochs are; the seed is distinct per (seed, epoch)
                    run.restart_model(seed * 100_003 + epoch, restart)
                sums = torch.zeros(3, device=device)
                for idx in batches(len(data), cfg.batch_size, run.gen, device,
                                   stratify=data.y if cfg.balanced_batches else None):
                    x, y = data.batch(idx)
                    net.train()
                    xp = poison(x, y)
                    # Source model: one CE step on the current poisons (min over theta).
                    model.train()
                    inp = xp.detach() if augment is None else augment(xp.detach(), run.gen)
                    with autocast(device, cfg.bf16):
                        logits = model(to_model_input(inp, cfg.channels_last)).float()
                    ce = F.cross_entropy(logits, y)
                    run.opt.zero_grad(set_to_none=True)
                    ce.backward()
                    run.opt.step()
                    # Generator: gen_steps steps on L_mi of the source features (min over delta), plus
                    # gen_ce x the source's CE when that is set.
                    model.eval()
                    for step in range(cfg.gen_steps):
                        if step:
                            xp = poison(x, y)
                        with autocast(device, cfg.bf16):
                            z = model.features(to_model_input(xp, cfg.channels_last))
                        mi = mi_loss(z.float(), y, tau=cfg.tau, zeta=cfg.zeta, distance_scale=dist_scale)
                        loss = mi
                        if cfg.gen_ce:  # error-minimising as well: the poisons also make the head's task easy
                            with autocast(device, cfg.bf16):
                                head_logits = model.head(z)
                            loss = mi + cfg.gen_ce * F.cross_entropy(head_logits.float(), y)
                        if cfg.partner_weight:  # targeted, as AP: towards each class's nearest class
                            with autocast(device, cfg.bf16):
                                partner_logits = partner_net(to_model_input(xp, cfg.channels_last))
                            loss = loss + cfg.partner_weight * F.cross_entropy(partner_logits.float(), partner[y])
                        if cfg.class_consistency:
                            loss = loss + cfg.class_consistency * within_class_share(xp - x, y, train.num_classes)
                        opt_gen.zero_grad(set_to_none=True)
                        loss.backward(inputs=gen_params)  # no weight gradients for the source: it is not updated here
                        opt_gen.step()
                        if ema is not None:
                            ema.update_parameters(net)
                    sums += torch.stack([ce.detach() * len(y), mi.detach() * len(y),
                                         (logits.detach().argmax(1) == y).sum().float()])
                    pb.update()
                run.sched.step()
                ce_m, mi_m, acc = (sums / len(data)).tolist()
                run.history.append({"epoch": epoch + 1, "source_ce": round(ce_m, 5), "source_train_acc": round(acc, 5),
                                    "mi_loss": round(mi_m, 5), "seconds": run.seconds()})
                pb.set_postfix(acc=f"{acc:.3f}", mi=f"{mi_m:.3f}")
                run.save(epoch + 1, generator=net.state_dict(), opt_generator=opt_gen.state_dict(),
                         **({} if ema is None else {"generator_ema": ema.state_dict()}))
        delta = generator_poisons(net if ema is None else ema.module, data, eps=cfg.eps, label_input=cfg.label_input,
                                  channels_last=cfg.channels_last, chunk=512, interval=cfg.interval_output)
        if cfg.partner_refine_steps:
            delta = refine_towards_partners(partner_net, data, delta, partner, eps=cfg.eps, steps=cfg.partner_refine_steps,
                                            chunk=512, channels_last=cfg.channels_last, bf16=cfg.bf16)
        more = {} if partner is None else {"partners": partner.tolist()}
        return AttackResult(delta=delta, info=run.info(**more))

