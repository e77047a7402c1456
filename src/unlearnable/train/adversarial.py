"""Adversarial training (AT) with PGD, the strongest generic defense against unlearnable data.

Madry et al. (2018): each training batch is replaced by its L-inf PGD adversary within
``eps`` before the step. The MI-UE paper evaluates AT at budgets 2, 4, 6 and 8/255 (Table 4)
with PGD-10 and step 2/255 at 8/255, random start, lr 0.1 decayed x0.1 at epochs 40 and 80
of 100 (Sec. 6, following Fu et al. 2022 and Liu et al. 2024): preset ``paper-at``. The CPU
preset ``cpu-at`` keeps the schedule's shape over 10 epochs with PGD-3.

Choices where the paper is silent:
- step size: ``2.5 * eps / steps`` (Madry's rule, enough to cross the ball from a random
  start); at PGD-10 this is eps/4, i.e. the paper's 2/255 at 8/255;
- the attack runs with the model in eval mode (BatchNorm uses its running statistics and
  is not updated by the attack's forward passes), then the step is taken in train mode;
- batch defenses (Cutout, CutMix, Mixup, UEraser) run before the attack, which then
  maximises the cross-entropy against the (possibly soft) targets they produce.
After training, robust accuracy against the same PGD attack is measured on the first
``at_robust_eval`` test images (1000 by default; 0 disables it).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from ..attacks.pgd import pgd
from ..errors import UnlearnableError
from ..runtime import autocast, to_model_input
from .loops import TensorData, batches
from .protocols import register_protocol
from .standard import VictimConfig, train_victim


@dataclass
class ATConfig:
    eps: float = 8 / 255
    steps: int = 10
    step_size: float | None = None  # None: 2.5 * eps / steps
    random_start: bool = True
    robust_eval: int = 1000  # test images for the final robust accuracy (0: skip)

    @property
    def step(self) -> float:
        return self.step_size if self.step_size is not None else 2.5 * self.eps / self.steps

    def validate(self) -> "ATConfig":
        if not (0 < self.eps <= 1):
            raise UnlearnableError(f"at_eps must be in (0, 1] (e.g. 4/255), got {self.eps}")
        if int(self.steps) != self.steps or self.steps < 1:
            raise UnlearnableError(f"at_steps must be a positive integer, got {self.steps}")
        if self.step_size is not None and self.step_size <= 0:
            raise UnlearnableError(f"at_step_size must be positive, got {self.step_size}")
        if self.robust_eval < 0:
            raise UnlearnableError(f"at_robust_eval must be >= 0, got {self.robust_eval}")
        return self

    @classmethod
    def from_options(cls, options: dict | None) -> "ATConfig":
        """From protocol options ``at_eps``, ``at_steps``, ``at_step_size``, ``at_random_start``,
        ``at_robust_eval`` (unknown keys are an error)."""
        options = dict(options or {})
        names = {f"at_{k}": k for k in ("eps", "steps", "step_size", "random_start", "robust_eval")}
        unknown = sorted(set(options) - set(names))
        if unknown:
            raise UnlearnableError(f"unknown option(s) for protocol at: {', '.join(unknown)}; "
                                   f"choose from {', '.join(sorted(names))}")
        return cls(**{names[k]: v for k, v in options.items() if v is not None}).validate()


def logits_of(model, x, *, bf16=False, channels_last=False):
    with autocast(x.device, bf16):
        out = model(to_model_input(x, channels_last))
    return out.float()


def pgd_adversary(cfg: ATConfig, generator: torch.Generator | None, *, bf16=False, channels_last=False):
    """A loop ``perturb`` hook: the PGD adversary of each batch against its (soft) targets."""
    def perturb(model, x, target):
        model.eval()
        delta = pgd(lambda inp: F.cross_entropy(logits_of(model, inp, bf16=bf16, channels_last=channels_last), target),
                    x, torch.zeros_like(x), steps=cfg.steps, step_size=cfg.step, eps=cfg.eps, minimize=False,
                    random_start=cfg.random_start, generator=generator)
        model.train()
        return x + delta
    return perturb


def robust_accuracy(model, data: TensorData, cfg: ATConfig, *, limit: int | None = None, batch_size: int = 256,
                    bf16=False, channels_last=False, seed: int = 0) -> float:
    """Accuracy under the PGD attack of ``cfg`` on the first ``limit`` items of ``data``."""
    from ..runtime import make_generator
    n = len(data) if limit is None else min(limit, len(data))
    gen = make_generator(seed)
    attack = pgd_adversary(cfg, gen, bf16=bf16, channels_last=channels_last)
    model.eval()
    correct = torch.zeros((), dtype=torch.long, device=data.x.device)
    for idx in batches(n, batch_size, None, data.x.device):
        x, y = data.batch(idx)
        x_adv = attack(model, x, y)
        model.eval()
        with torch.no_grad():
            correct += (logits_of(model, x_adv, bf16=bf16, channels_last=channels_last).argmax(1) == y).sum()
    return int(correct) / max(1, n)


@register_protocol("at")
def adversarial_training(train, test, cfg: VictimConfig, *, seed: int = 0, defenses=(), options: dict | None = None,
                         desc: str | None = None):
    """PGD adversarial training; options (``at_eps`` ...) override the preset's ``protocol_options``."""
    at = ATConfig.from_options({**cfg.protocol_options, **(options or {})})
    factory = lambda gen: pgd_adversary(at, gen, bf16=cfg.bf16, channels_last=cfg.channels_last)  # noqa: E731
    res = train_victim(train, test, cfg, seed=seed, desc=desc or f"victim (at {at.eps * 255:g}/255)",
                       defenses=defenses, perturb_factory=factory, protocol="at")
    at_info = {**asdict(at), "step_size": at.step, "eps_255": round(at.eps * 255, 4)}
    if at.robust_eval:
        te = TensorData.from_dataset(test, next(res.model.parameters()).device)
        at_info["robust_test_acc"] = robust_accuracy(res.model, te, at, limit=at.robust_eval, bf16=cfg.bf16,
                                                     channels_last=cfg.channels_last, seed=seed)
        at_info["robust_test_images"] = min(at.robust_eval, len(te))
    res.extra["at"] = at_info
    return res
