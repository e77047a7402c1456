"""LE: learnable examples by joint-conditional diffusion purification (Jiang et al., ACM MM 2023).

"Unlearnable Examples Give a False Sense of Security: Piercing through Unexploitable
Data with Learnable Examples" turns protected images (UEs) into learnable ones (LEs)
with a diffusion model trained on *other, unprotected* data: each UE is diffused a
little and denoised, and every reverse step is guided toward the UE by its pixel
(MSE) and perceptual (LPIPS) similarity to the UE diffused to the same step, so the
result keeps the UE's content while landing on the clean-data manifold learned from
the new data. The diffuse-and-denoise cycle is repeated, each time guided by the
original UE. Authors' defaults (CIFAR-10): DDPM (T = 1000, linear betas), 20 steps
per cycle (t = 0.02), 4 cycles, all 20 reverse steps taken, MSE + LPIPS(AlexNet)
guidance.

Here, as for AVA, the denoiser is a small DDPM trained on a clean split disjoint from
the protected images (``clean=``; the embedded Fashion-MNIST's unprotected training
images by default) or loaded from ``ckpt=``; see :mod:`unlearnable.defenses.ava`.
Guidance, in the classifier-guidance form, shifts the mean of x_s by

    -guide_scale * (1 - ab_t / ab_s) * (g_pix + perceptual_weight * |g_pix| / |g_perc| * g_perc)

with g_pix = x_t - UE_t (the gradient of half the squared pixel distance) and g_perc
the gradient of an LPIPS-style distance (channel-normalised feature maps, squared
differences, spatial mean, summed over levels, uniform weights) computed on the
denoiser's own encoder features at step t: no pretrained AlexNet can be downloaded,
and these features were learned on clean images of the same kind. The perceptual
gradient is rescaled to the pixel gradient's norm per image (the paper's LPIPS scale
is tied to AlexNet) and the step's pull ``guide_scale * (1 - ab_t/ab_s)`` is capped at
0.9 so that a strided schedule never overshoots the target. ``guide_scale`` 50 was
chosen on small test images (content kept, most of a +-16/255 class-wise pattern
removed); the paper's 70000 multiplies another normalisation and is not comparable.
CPU preset: 2 cycles of 10 steps; preset "paper": 4 cycles of 20 (all steps).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import UnlearnableError
from ._denoiser import DenoiserConfig, Diffusion
from ._generative import check_config
from .ava import AVA, diffusion_purify
from .base import register_defense

MAX_PULL = 0.9


@dataclass
class LEConfig(DenoiserConfig):
    purify_step: int = 20  # diffusion step of each cycle (paper 20 of 1000)
    cycles: int = 2  # diffuse-and-denoise repetitions (paper 4)
    steps: int = 10  # reverse steps per cycle (paper 20: every step)
    guide_scale: float = 50.0
    perceptual_weight: float = 1.0  # 0: pixel (MSE) guidance only
    purify_batch: int = 500

    def validate(self):
        self.check("le")
        check_config("le", self, positive=("purify_step", "cycles", "steps", "purify_batch"),
                     nonneg=("guide_scale", "perceptual_weight"))
        if self.purify_step > Diffusion.T:
            raise UnlearnableError(f"le: purify_step must be <= {Diffusion.T}, got {self.purify_step}")


PRESETS = {"cpu": LEConfig(), "paper": LEConfig(cycles=4, steps=20, width=64, epochs=50)}


def perceptual_distance(feats_a, feats_b) -> torch.Tensor:
    """LPIPS-style distance per image: unit-normalised channel vectors, squared difference,
    mean over positions, summed over feature levels (uniform weights)."""
    total = 0
    for a, b in zip(feats_a, feats_b):
        a = a / (a.norm(dim=1, keepdim=True) + 1e-8)
        b = b / (b.norm(dim=1, keepdim=True) + 1e-8)
        total = total + (a - b).square().sum(1).mean((1, 2))
    return total


def le_guidance(model, diffusion: Diffusion, ue: torch.Tensor, cfg: LEConfig, generator: torch.Generator):
    """The joint (pixel + perceptual) guidance toward the UE ``ue`` (in [-1, 1]) for ``Diffusion.reverse``."""

    def guide(x_t, t, s):
        target = diffusion.noise_to(ue, t, generator)
        g = x_t - target
        if cfg.perceptual_weight > 0:
            tt = torch.full((len(x_t),), t, device=x_t.device)
            with torch.enable_grad():
                x_in = x_t.detach().requires_grad_(True)
                feats_in = model.encode(x_in, tt)[0]
                with torch.no_grad():
                    feats_target = model.encode(target, tt)[0]
                g_perc = torch.autograd.grad(perceptual_distance(feats_in, feats_target).sum(), x_in)[0]
            ratio = g.flatten(1).norm(dim=1) / (g_perc.flatten(1).norm(dim=1) + 1e-12)
            g = g + cfg.perceptual_weight * ratio.view(-1, 1, 1, 1) * g_perc
        pull = min(cfg.guide_scale * (1 - diffusion.ab(t) / diffusion.ab(s)), MAX_PULL)
        return pull * g

    return guide


@register_defense
class LE(AVA):
    """Learnable examples by joint-conditional diffusion purification (Jiang et al. 2023).

    Same API and spec options as :class:`~unlearnable.defenses.ava.AVA` (``clean=``,
    ``ckpt=``, ``cache=``, ``preset=``) with :class:`LEConfig` options, e.g.
    ``le:cycles=4+steps=20+guide_scale=100``. A denoiser trained or cached for one of
    the two defenses serves the other when it covers the steps needed.
    """

    name = "le"
    Config = LEConfig

    @staticmethod
    def presets():
        return PRESETS

    def t_needed(self) -> int:
        return self.config.purify_step

    def purify(self, model, x, generator):
        cfg, diffusion = self.config, Diffusion()
        return diffusion_purify(model, x, cfg.purify_step, cfg.steps, eta=1.0, generator=generator, bf16=cfg.bf16,
                                channels_last=cfg.channels_last, cycles=cfg.cycles,
                                guide_factory=lambda ue: le_guidance(model, diffusion, ue, cfg, generator))
