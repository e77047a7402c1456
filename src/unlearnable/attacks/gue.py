"""GUE: game unlearnable examples (Liu, Wang and Gao, "Game-Theoretic Unlearnable Example
Generator", AAAI 2024, arXiv:2401.17523).

The attack is a Stackelberg game. The leader is a poison *generator* network G_a that maps
a clean image to a bounded perturbation, ``delta = eps * tanh(G_a(x))``; the follower is
the victim classifier theta, which minimises the cross-entropy on the poisoned data,

    g(a, theta) = CE(theta(x + delta_a(x)), y).

The leader wants the follower's best response theta*(a) to do badly on clean data,
measured by the paper's bounded payoff (lower is better for the leader)

    f(theta) = E[ max_{k != y} CE(theta(x), k) ] = E[ logsumexp(z) - min_{k != y} z_k ],

which is smallest (log(K - 1)) when the true class has no probability and the others
share it evenly; unlike the raw clean loss it cannot blow up, which the paper credits for
stable training. The paper solves the bilevel problem ``min f(theta) s.t. theta in
argmin g(a, .)`` with a first-order value-function method (BOME): with the constraint
``q(a, theta) = g(a, theta) - g(a, theta_T) <= 0``, where theta_T is the follower's best
response approximated by ``inner_steps`` optimiser steps from theta on the current poisons
(not differentiated through), every batch moves both players along

    d = grad f + lambda * grad q,  lambda = max(eta |grad q|^2 - <grad f, grad q>, 0) / |grad q|^2,

the generator by ``lambda * grad_a q`` (f does not depend on a) and the classifier by
``grad_theta f + lambda * grad_theta q``. Poisons are then the trained generator's output
on every training image (generator in eval mode), projected to the budget and pixel range.

Defaults from the paper and its public release (CIFAR-10): eps 8/255, a U-Net-style
encoder-decoder generator (three 2x downsamplings, skip connections, a final 1x1 conv +
BatchNorm + tanh), a ResNet-18 classifier, 50 epochs of batch 256, plain SGD at lr 0.1
(generator) and 0.01 (classifier), the inner best response by 10 Adam steps of lr 1e-4
on the batch, eta 1.5, no data augmentation, the payoff on the clean training batch.
Our choices: the generator is our own (``gen_width`` 32 at the first level, doubling per
level; decoder upsampling to the skip's size, so odd sizes such as 28 and 7 px work); it
sees the image only unless ``label_input`` adds a learned class embedding at the
bottleneck (the paper's generator has no label); the poisons come from the generator at
the end of training (the release also keeps the generator whose scratch-trained victim
had the lowest *test* accuracy, which uses test labels; we do not); ``train_augment``
(default none, as the paper) applies one random augmentation draw per batch to the
poisoned images that both classifiers see; ``gen_optimizer`` may be ``adam`` (default
``sgd``, as the paper).

The ``cpu`` preset trades the paper's ~10,000 game steps for about 800 (5 epochs of
batch 32 on 5,000 images, about as long as MI-UE's ``cpu`` run): the half-width CNN
(``cnn-small``) as the classifier, one inner Adam step of lr 1e-3, classifier lr 0.02,
generator lr 1.0, a width-16 two-level generator, and ``label_input=True`` (a class
embedding lets the generator learn class-wise patterns in few steps: on the tiny test
task, image-only generators hurt the victim in one of two seeds after 20 epochs,
class-conditioned ones in both after 6). Even so the game is far from its equilibrium at
this length: on a 1,000-image Fashion-MNIST subset, 470 steps did not lower a victim's
accuracy below random noise's (docs/attacks.md). Resumable: a checkpoint
every ``checkpoint_batches`` batches and after each epoch (the epoch's order is saved, so
a resumed run is bit-identical).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from ..data.augment import build_augment
from ..errors import UnlearnableError
from ..models import build_model
from ..progress import bar
from ..runtime import autocast, make_generator, prepare_model, resolve_device, seed_everything, to_model_input
from ..train.loops import TensorData, num_batches
from .base import Attack, AttackResult, ClassifierSourceConfig, register_attack, rng_state, set_rng_state
from .generator import PerturbationGenerator, generator_image, generator_poisons
from .source import RUNTIME_KEYS, RunRecord


def payoff(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The paper's bounded leader payoff: mean over the batch of max_{k != y} CE(logits, k)."""
    others = logits.masked_fill(F.one_hot(y, logits.shape[1]).bool(), float("inf"))
    return (torch.logsumexp(logits, 1) - others.min(1).values).mean()


@dataclass
class GUEConfig(ClassifierSourceConfig):
    epochs: int = 50
    lr: float = 0.01  # classifier SGD
    gen_lr: float = 0.1  # generator learning rate
    gen_optimizer: str = "sgd"  # sgd (the paper) or adam
    momentum: float = 0.0
    weight_decay: float = 0.0
    inner_steps: int = 10  # T: Adam steps approximating the follower's best response
    inner_lr: float = 1e-4
    eta: float = 1.5  # BOME's constraint weight
    gen_width: int = 32
    gen_levels: int = 3
    label_input: bool = False
    train_augment: str = "none"
    checkpoint_batches: int = 16  # does not change the result

    def validate(self):
        self.check_source("gue", ("inner_steps", "gen_width", "gen_levels", "checkpoint_batches"))
        if min(self.lr, self.gen_lr, self.inner_lr, self.eta) <= 0 or self.momentum < 0 or self.weight_decay < 0:
            raise UnlearnableError("gue: lr, gen_lr, inner_lr and eta must be positive, momentum and "
                                   "weight_decay non-negative")
        if self.gen_optimizer not in ("sgd", "adam"):
            raise UnlearnableError(f"gue: gen_optimizer must be sgd or adam, got {self.gen_optimizer!r}")


_RUNTIME = RUNTIME_KEYS | {"checkpoint_batches"}


@register_attack
class GUE(Attack):
    name = "gue"
    Config = GUEConfig
    presets = {
        "cpu": GUEConfig(model="cnn-small", epochs=5, batch_size=32, lr=0.02, gen_lr=1.0, inner_steps=1,
                         inner_lr=1e-3, gen_width=16, gen_levels=2, label_input=True, crop_padding=2),
        "paper-cifar10": GUEConfig(model="resnet-18"),
    }

    def generate(self, train, *, seed: int = 0, workdir=None, resume: bool = False) -> AttackResult:
        cfg = self.config
        device = resolve_device(cfg.device)
        # Setup order (seed, generator, classifier, its shadow, poison generator) fixes the random streams.
        seed_everything(seed)
        gen = make_generator(seed)
        k = train.num_classes
        cls = prepare_model(build_model(cfg.model, train.channels, k, train.image_size[0]), device, cfg.channels_last)
        shadow = prepare_model(build_model(cfg.model, train.channels, k, train.image_size[0]), device,
                               cfg.channels_last)
        net = prepare_model(PerturbationGenerator(train.channels, cfg.gen_width, cfg.gen_levels,
                                                  k if cfg.label_input else None), device, cfg.channels_last)
        opt_cls = torch.optim.SGD(cls.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
        if cfg.gen_optimizer == "adam":
            opt_gen = torch.optim.Adam(net.parameters(), lr=cfg.gen_lr)
        else:
            opt_gen = torch.optim.SGD(net.parameters(), lr=cfg.gen_lr, momentum=cfg.momentum,
                                      weight_decay=cfg.weight_decay)
        data = TensorData.from_dataset(train, device)
        n, n_b = len(data), num_batches(len(data), cfg.batch_size)
        augment = build_augment(cfg.train_augment, cfg.crop_padding)
        record = RunRecord(self.name, cfg, train, seed=seed, workdir=workdir, resume=resume, runtime_keys=_RUNTIME)
        epoch, start_batch, order, history, sums = 0, 0, None, [], {}
        resumed_from = 0
        if record.state is not None:
            state = record.state
            cls.load_state_dict(state["classifier"])
            net.load_state_dict(state["generator"])
            opt_cls.load_state_dict(state["opt_classifier"])
            opt_gen.load_state_dict(state["opt_generator"])
            set_rng_state(gen, state["rng"])
            epoch, start_batch, order = state["epoch"], state["batch"], state["order"]
            history, sums = list(state["history"]), dict(state["sums"])
            resumed_from = state["units"]

        def save(units: int) -> None:
            record.save({"epoch": epoch, "batch": start_batch, "order": order, "classifier": cls.state_dict(),
                         "generator": net.state_dict(), "opt_classifier": opt_cls.state_dict(),
                         "opt_generator": opt_gen.state_dict(), "rng": rng_state(gen), "history": history,
                         "sums": sums, "units": units})

        def logits(model, x):
            with autocast(device, cfg.bf16):
                return model(to_model_input(x, cfg.channels_last)).float()

        gen_params, cls_params = list(net.parameters()), list(cls.parameters())

        def step(x, y) -> dict:
            """One BOME update of both players on the batch (x, y); returns the batch's statistics."""
            net.train()
            cls.train()
            poisoned = generator_image(x, net(x, y if cfg.label_input else None), cfg.eps)
            if augment is not None:
                poisoned = augment(poisoned, gen)
            # The follower's approximate best response theta_T: a copy of theta trained on this batch.
            shadow.load_state_dict(cls.state_dict())
            shadow.train()
            inner = torch.optim.Adam(shadow.parameters(), lr=cfg.inner_lr)
            fixed = poisoned.detach()
            for _ in range(cfg.inner_steps):
                inner.zero_grad(set_to_none=True)
                F.cross_entropy(logits(shadow, fixed), y).backward()
                inner.step()
            shadow.zero_grad(set_to_none=True)
            # The leader's payoff on the clean batch (a function of theta only).
            clean_logits = logits(cls, x)
            f = payoff(clean_logits, y)
            grad_f = torch.autograd.grad(f, cls_params)
            # The constraint q = g(a, theta) - g(a, theta_T) and its gradient in (a, theta).
            g = F.cross_entropy(logits(cls, poisoned), y)
            q = g - F.cross_entropy(logits(shadow, poisoned), y)
            grads = torch.autograd.grad(q, gen_params + cls_params)
            grad_a, grad_q = grads[:len(gen_params)], grads[len(gen_params):]
            norm_q = sum((t.float() ** 2).sum() for t in grads)
            dot = sum((a.float() * b.float()).sum() for a, b in zip(grad_f, grad_q))
            lam = torch.relu(cfg.eta * norm_q - dot) / (norm_q + 1e-12)
            for p, ga in zip(gen_params, grad_a):
                p.grad = lam * ga
            for p, gf, gq in zip(cls_params, grad_f, grad_q):
                p.grad = gf + lam * gq
            opt_gen.step()
            opt_cls.step()
            acc = (clean_logits.argmax(1) == y).float().mean()
            return {"payoff": float(f.detach()), "poison_ce": float(g.detach()), "q": float(q.detach()),
                    "lambda": float(lam), "clean_batch_acc": float(acc)}

        units = epoch * n_b + start_batch
        with bar(total=cfg.epochs * n_b, initial=units, desc="gue", unit="batch") as pb:
            while epoch < cfg.epochs:
                if order is None:
                    order = torch.randperm(n, generator=gen)
                for b in range(start_batch, n_b):
                    idx = order[b * cfg.batch_size:(b + 1) * cfg.batch_size].to(device)
                    x, y = data.batch(idx)
                    stats = step(x, y)
                    for key, v in stats.items():
                        sums[key] = sums.get(key, 0.0) + v
                    units += 1
                    pb.update()
                    start_batch = b + 1
                    if start_batch < n_b and start_batch % cfg.checkpoint_batches == 0:
                        save(units)
                history.append({"epoch": epoch + 1, **{key: round(v / n_b, 5) for key, v in sums.items()},
                                "seconds": record.seconds()})
                pb.set_postfix(payoff=f"{history[-1]['payoff']:.3f}", q=f"{history[-1]['q']:.4f}")
                epoch, start_batch, order, sums = epoch + 1, 0, None, {}
                save(units)
        delta = generator_poisons(net, data, eps=cfg.eps, label_input=cfg.label_input,
                                  channels_last=cfg.channels_last, chunk=cfg.batch_size)
        info = {"history": history, "config": asdict(cfg), "seconds": record.seconds(),
                "resumed_from_epoch": resumed_from}
        return AttackResult(delta=delta, info=info)
