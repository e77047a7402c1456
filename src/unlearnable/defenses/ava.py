"""AVA (AVATAR): diffusion purification of unlearnable data (Dolatabadi et al. 2023).

"The Devil's Advocate: Shattering the Illusion of Unexploitable Data using Diffusion
Models" diffuses each protected image to a moderate time t* (enough Gaussian noise to
drown the bounded perturbation) and runs the reverse process of a diffusion model
trained on clean data; the output lies near the clean-data manifold and near the
input's content. The paper uses a pretrained score-SDE model (VP-SDE, the DiffPure
setup) and solves the reverse SDE; APBench's re-implementation runs DiffPure with
t* = 0.06 on CIFAR-10. We take t* = 0.1 (DiffPure's value for L-inf 8/255
perturbations on CIFAR-10, which AVATAR builds on), i.e. step 100 of the DDPM schedule
(T = 1000, betas 1e-4..0.02: the discretised VP-SDE), where the added noise has a
standard deviation of 0.32 on the [-1, 1] scale (about 41/255 in pixel units).

No pretrained weights can be downloaded here, so the denoiser is either

* trained now on a clean split (``AVA(clean=ImageDataset | spec)``; for the embedded
  Fashion-MNIST the default is the training-split images that were not protected),
  only on the steps 1..t* the purifier visits, see :class:`DenoiserConfig`; or
* loaded from a user checkpoint (``ckpt=FILE.safetensors``, written by this module's
  ``cache=`` option or :func:`unlearnable.defenses._denoiser.train_denoiser`).

Purification: x_t* = sqrt(ab) x + sqrt(1 - ab) noise, then ``steps`` reverse steps
(generalised DDIM with eta = 1, i.e. ancestral DDPM sampling on a strided schedule;
the paper's reverse SDE with Euler-Maruyama at dt = 1e-3 takes 100 steps from t* = 0.1,
which is preset "paper"; the CPU preset takes 10), in batches of ``purify_batch``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from ..data import ImageDataset
from ..errors import UnlearnableError
from ..runtime import make_generator, resolve_device
from ._denoiser import DenoiserConfig, Diffusion, denoiser_for
from ._generative import build_config, check_config, check_images, config_keys, describe_spec, map_batches, parse_options
from .base import Defense, register_defense


@dataclass
class AVAConfig(DenoiserConfig):
    t_star: float = 0.1  # diffusion time in (0, 1]: step round(t_star * 1000)
    steps: int = 10  # reverse steps from t* to 0 (paper: 100)
    eta: float = 1.0  # 1: stochastic (DDPM / reverse SDE), 0: deterministic DDIM
    purify_batch: int = 500

    def validate(self):
        self.check("ava")
        check_config("ava", self, positive=("steps", "purify_batch"), unit=("t_star",), nonneg=("eta",))
        if self.t_step < 1:
            raise UnlearnableError(f"ava: t_star={self.t_star} is below one diffusion step (1/{Diffusion.T})")

    @property
    def t_step(self) -> int:
        return int(round(self.t_star * Diffusion.T))


PRESETS = {"cpu": AVAConfig(), "paper": AVAConfig(steps=100, width=64, epochs=50)}


def diffusion_purify(model, x, t_from: int, steps: int, *, eta: float, generator, bf16=False, channels_last=False,
                     guide_factory=None, cycles: int = 1):
    """Noise ``x`` (float NCHW in [0, 1]) to step ``t_from`` and denoise it, ``cycles`` times.

    ``guide_factory(x_original)`` returns LE's guidance function for the reverse process.
    """
    diffusion = Diffusion()
    x_pm = x * 2 - 1
    guide = guide_factory(x_pm) if guide_factory else None
    out = x_pm
    for _ in range(cycles):
        xt = diffusion.noise_to(out, t_from, generator)
        out = diffusion.reverse(model, xt, t_from, steps, eta=eta, generator=generator, guide=guide, bf16=bf16,
                                channels_last=channels_last)
    return (out.clamp(-1, 1) + 1) / 2


@register_defense
class AVA(Defense):
    """Diffusion purification of the training set (AVATAR, Dolatabadi et al. 2023); see the module docstring.

    ``AVA(config, clean=None | ImageDataset | spec, ckpt=None, cache=None)``. Spec:
    ``ava`` (embedded Fashion-MNIST: held-out clean training images), ``ava:SPEC`` or
    ``ava:clean=SPEC`` (a clean dataset disjoint from the protected images),
    ``ava:ckpt=FILE.safetensors``, ``ava:cache=FILE.safetensors`` (train once, reuse),
    plus config options such as ``ava:t_star=0.1+steps=20+epochs=30`` and ``preset=paper``.
    """

    name = "ava"
    kind = "data"
    Config = AVAConfig

    def __init__(self, config=None, *, clean=None, ckpt: str | None = None, cache: str | None = None):
        self.config = config or self.Config()
        self.config.validate()
        if ckpt and cache:
            raise UnlearnableError(f"defense {self.name!r}: give ckpt= (load) or cache= (train once), not both")
        self.clean, self.ckpt, self.cache = clean, ckpt, cache
        self.info: dict = {}

    @classmethod
    def from_arg(cls, arg):
        keys = {**config_keys(cls.Config), "preset": str, "clean": str, "ckpt": str, "cache": str}
        opts = parse_options(cls.name, arg, keys, positional="clean")
        cfg = build_config(cls.name, cls.presets(), opts, cls.Config)
        clean = opts.pop("clean", None)
        if clean and clean.endswith(".safetensors") and "ckpt" not in opts:
            opts["ckpt"] = clean  # ``ava:FILE.safetensors`` is a checkpoint, not data
            clean = None
        return cls(cfg, clean=clean, **opts)

    @staticmethod
    def presets():
        return PRESETS

    def describe(self) -> str:
        clean = getattr(self.clean, "source", self.clean)
        return describe_spec(self.name, self.config, self.presets()["cpu"], clean=clean, ckpt=self.ckpt,
                             cache=self.cache)

    def t_needed(self) -> int:
        return self.config.t_step

    def purify(self, model, x, generator):
        cfg = self.config
        return diffusion_purify(model, x, cfg.t_step, cfg.steps, eta=cfg.eta, generator=generator, bf16=cfg.bf16,
                                channels_last=cfg.channels_last)

    def apply(self, train: ImageDataset, *, seed: int = 0, device=None) -> ImageDataset:
        device = device if isinstance(device, torch.device) else resolve_device(device)
        t0 = time.time()
        check_images(self.name, train)
        model, info = denoiser_for(self.name, train, clean=self.clean, ckpt=self.ckpt, cache=self.cache,
                                   cfg=self.config, t_needed=self.t_needed(), seed=seed, device=device)
        if self.config.channels_last:
            model = model.to(memory_format=torch.channels_last)
        gen = make_generator(seed + 17)
        images = map_batches(train.images, lambda x, rows: self.purify(model, x, gen),
                             self.config.purify_batch, device, desc=f"{self.name} purify")
        self.info = {**info, "seconds": round(time.time() - t0, 2)}
        return train.with_images(images, source=f"{self.name}:{train.source}")
