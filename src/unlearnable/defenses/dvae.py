"""D-VAE: purify unlearnable examples with rate-constrained VAEs (Yu et al., ICML 2024).

"Purify Unlearnable Examples via Rate-Constrained Variational Autoencoders" observes that
a VAE whose KL term (the rate) is held low reconstructs the images but not the small
perturbations, and adds a second decoder that models the perturbation from learnable
class-wise embeddings (the disentangling "D"-VAE). Training uses only the protected
set itself (no clean data), with the loss

    MSE(rec, x) + MSE(clip(rec + p), x) + w_kl * max(KL, target)
    [+ max(MSE(p, 0), 0.002) once the first sixth of the epochs is done]

where KL is summed over latent channels and averaged over latent positions and
images, and ``max(KL, target)`` pushes the rate down only while it is above the
target (the rate constraint). Purification has two stages, each with a fresh D-VAE:

1. train on the protected images x; x1 = clip(x - p1(x, y));
2. train on x1; the output is the reconstruction of clip(x1 - p2(x1, y)).

Paper defaults (authors' code for CIFAR-10): ResNet-18 stem to the first block of
layer 2 as the encoder (128 channels at 16x16), 256 latent channels, transposed-conv
decoders, spatial class embeddings added to the latent for the perturbation decoder,
Adam lr 5e-3 with a cosine schedule, batch 128, 60 epochs per stage, gradient
clipping at 5, KL target 1.0 in stage 1 and 3.0 in stage 2 (their scripts; the
argument's default is 2.5), KL weight 0.01, perturbation floor 0.002 from epoch 10.
The classifier the authors load alongside is used only for logging, so it is omitted.

Here (preset "cpu"): a small conv encoder (pixel unshuffle, three 3x3 convs of width 32
at half resolution), 32 latent channels at half resolution, decoders of one 3x3 conv,
a pixel shuffle and one small 3x3 conv, GroupNorm instead of BatchNorm/InstanceNorm,
15 epochs per stage. The losses, KL targets and weight, optimiser, schedule, batch size
and the two-stage procedure are the paper's. Latents are sampled (reparameterised)
during purification, as in the authors' code, from a seeded generator. Preset "paper"
restores their width (128 channels at half resolution), 256 latent channels and 60
epochs, with this encoder.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..data import ImageDataset
from ..data.dataset import fingerprint
from ..errors import UnlearnableError
from ..progress import log
from ..runtime import autocast, make_generator, resolve_device, to_model_input
from ._generative import (build_config, check_config, check_images, config_keys, describe_spec, fit,
                          load_checkpoint, load_module, map_batches, pad_to_multiple, parse_options, save_checkpoint,
                          seeded_init)
from .base import Defense, register_defense

KIND = "dvae"


@dataclass
class DVAEConfig:
    epochs: int = 15  # per stage (paper 60)
    batch_size: int = 128
    lr: float = 5e-3  # Adam, cosine to 0
    grad_clip: float = 5.0
    width: int = 32  # channels at half resolution (paper: 128, ResNet-18 layer 2)
    latent: int = 32  # latent channels per position (paper 256)
    kl_target1: float = 1.0  # rate constraint, stage 1 (nats per latent position)
    kl_target2: float = 3.0  # stage 2 (paper scripts 3.0)
    kl_weight: float = 0.01
    perturb_floor: float = 0.002  # the perturbation-magnitude penalty's floor (MSE units)
    perturb_start: float = 1 / 6  # fraction of the epochs before that penalty starts (paper: 10 of 60)
    purify_batch: int = 500
    bf16: bool = False
    channels_last: bool = False

    def validate(self):
        check_config("dvae", self, positive=("epochs", "batch_size", "lr", "width", "latent", "purify_batch"),
                     nonneg=("grad_clip", "kl_target1", "kl_target2", "kl_weight", "perturb_floor"))
        if not 0 <= self.perturb_start <= 1:
            raise UnlearnableError(f"dvae: perturb_start must be in [0, 1], got {self.perturb_start}")


PRESETS = {"cpu": DVAEConfig(), "paper": DVAEConfig(epochs=60, width=128, latent=256)}


class DisentangleVAE(nn.Module):
    """Encoder -> Gaussian latent (C_z x H/2 x W/2) -> image decoder, plus a perturbation
    decoder fed with the latent and a learnable spatial embedding of the label.

    The image is folded to half resolution (pixel unshuffle) before the first conv and the
    decoders unfold it again (1x1 conv + pixel shuffle, then one small 3x3 conv), so that
    no wide layer runs at full resolution (the CPU cost).
    """

    def __init__(self, channels: int, num_classes: int, image_size: tuple[int, int], width: int, latent: int):
        super().__init__()
        w = width
        self.half = (-(-image_size[0] // 2), -(-image_size[1] // 2))
        g = 8 if w % 8 == 0 else 1
        self.encoder = nn.Sequential(
            nn.PixelUnshuffle(2), nn.Conv2d(4 * channels, w, 3, padding=1), nn.GroupNorm(g, w), nn.ReLU(),
            nn.Conv2d(w, w, 3, padding=1), nn.GroupNorm(g, w), nn.ReLU(),
            nn.Conv2d(w, w, 3, padding=1), nn.GroupNorm(g, w), nn.ReLU())
        self.to_mu, self.to_logvar = nn.Conv2d(w, latent, 1), nn.Conv2d(w, latent, 1)
        self.post = nn.Conv2d(latent, w, 1)
        self.decoder = self._decoder(w, channels)
        self.embedding = nn.Embedding(num_classes, w * self.half[0] * self.half[1])
        self.decoder_p = self._decoder(w, channels)

    @staticmethod
    def _decoder(w: int, channels: int, c0: int = 8) -> nn.Sequential:
        g = 8 if w % 8 == 0 else 1
        return nn.Sequential(nn.Conv2d(w, w, 3, padding=1), nn.GroupNorm(g, w), nn.ReLU(),
                             nn.Conv2d(w, 4 * c0, 1), nn.PixelShuffle(2), nn.ReLU(),
                             nn.Conv2d(c0, channels, 3, padding=1))

    def forward(self, x: torch.Tensor, y: torch.Tensor, noise: torch.Tensor | None = None):
        """Returns (rec in [0,1], mu, logvar, perturbation); ``noise`` N(0,1) samples the latent
        (None: a fresh draw from the global stream)."""
        h, w_ = x.shape[-2:]
        h_ = self.encoder(pad_to_multiple(x, 2))
        mu, logvar = self.to_mu(h_), self.to_logvar(h_).clamp(-30, 20)
        eps = torch.randn_like(mu) if noise is None else noise
        z = self.post(mu + eps * (0.5 * logvar).exp())
        rec = torch.sigmoid(self.decoder(z))[..., :h, :w_]
        emb = self.embedding(y).view(len(y), -1, *z.shape[-2:])
        pert = self.decoder_p(z + emb)[..., :h, :w_]
        return rec, mu, logvar, pert

def training_fields(cfg: DVAEConfig) -> dict:
    """The config fields that shape the trained networks (a cache must match them)."""
    return {k: v for k, v in dataclasses.asdict(cfg).items() if k != "purify_batch"}


def kl_per_position(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(q(z|x) || N(0, I)) summed over latent channels, averaged over positions and images."""
    return (-0.5 * (1 + logvar - mu.square() - logvar.exp())).sum(1).mean()


def train_dvae(images: np.ndarray, labels: np.ndarray, num_classes: int, cfg: DVAEConfig, kl_target: float, *,
               seed: int, device, desc: str = "d-vae") -> tuple[DisentangleVAE, list[dict]]:
    """Train one D-VAE on uint8 NHWC ``images``; returns the model (eval mode) and per-epoch losses."""
    shape = images.shape[1:3]
    model = seeded_init(lambda: DisentangleVAE(images.shape[-1], num_classes, shape, cfg.width, cfg.latent), seed)
    model = model.to(device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    gen = make_generator(seed + 1)
    x = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous().to(device)
    y = torch.from_numpy(labels).to(device)
    penalty_from = int(round(cfg.perturb_start * cfg.epochs))

    def step_loss(xb, yb, epoch):
        noise = torch.randn((len(xb), cfg.latent, *model.half), generator=gen).to(device)
        with autocast(device, cfg.bf16):
            rec, mu, logvar, pert = model(to_model_input(xb, cfg.channels_last), yb, noise)
        rec, mu, logvar, pert = rec.float(), mu.float(), logvar.float(), pert.float()
        loss_rec = F.mse_loss(rec, xb)
        loss_rec_p = F.mse_loss((rec + pert).clamp(0, 1), xb)
        kl = kl_per_position(mu, logvar)
        loss = loss_rec + loss_rec_p + cfg.kl_weight * torch.clamp(kl, min=kl_target)
        p_mse = pert.square().mean()
        if epoch >= penalty_from and cfg.perturb_floor > 0:
            loss = loss + torch.clamp(p_mse, min=cfg.perturb_floor)
        return loss, {"loss": loss, "rec_mse": loss_rec, "rec_p_mse": loss_rec_p, "kl": kl, "p_mse": p_mse}

    history = fit(model, step_loss, x, y, epochs=cfg.epochs, batch_size=cfg.batch_size, lr=cfg.lr,
                  generator=gen, grad_clip=cfg.grad_clip, desc=desc)
    return model, history


@torch.no_grad()
def dvae_outputs(model: DisentangleVAE, images: np.ndarray, labels: np.ndarray, cfg: DVAEConfig, *, seed: int,
                 device, subtract_then_reconstruct: bool) -> np.ndarray:
    """Stage 1: clip(x - p(x)). Stage 2 (``subtract_then_reconstruct``): rec(clip(x - p(x)))."""
    gen = make_generator(seed)
    y_all = torch.from_numpy(labels)

    def run(x, rows):
        y = y_all[rows].to(device)

        def forward(inp):
            noise = torch.randn((len(inp), cfg.latent, *model.half), generator=gen).to(device)
            with autocast(device, cfg.bf16):
                rec, _, _, pert = model(to_model_input(inp, cfg.channels_last), y, noise)
            return rec.float(), pert.float()

        _, pert = forward(x)
        x1 = (x - pert).clamp(0, 1)
        return forward(x1)[0] if subtract_then_reconstruct else x1

    return map_batches(images, run, cfg.purify_batch, device, desc="d-vae purify")


@register_defense
class DVAE(Defense):
    """Two-stage D-VAE purification of the training set (Yu et al. 2024); see the module docstring.

    ``DVAE(config, cache=PATH)``: with ``cache`` the two trained D-VAEs are saved to (or,
    when the file exists and was trained on the same images and labels, loaded from) one
    ``.safetensors`` file. Spec: ``dvae``, ``dvae:epochs=30+kl_target2=2.5``,
    ``dvae:preset=paper+cache=runs/dvae.safetensors``.
    """

    name = "dvae"
    kind = "data"

    def __init__(self, config: DVAEConfig | None = None, *, cache: str | None = None):
        self.config = config or DVAEConfig()
        self.config.validate()
        self.cache = cache
        self.info: dict = {}

    @classmethod
    def from_arg(cls, arg):
        keys = {**config_keys(DVAEConfig), "preset": str, "cache": str}
        opts = parse_options(cls.name, arg, keys)
        cfg = build_config(cls.name, PRESETS, opts, DVAEConfig)
        return cls(cfg, **opts)

    def describe(self) -> str:
        return describe_spec(self.name, self.config, PRESETS["cpu"], cache=self.cache)

    def apply(self, train: ImageDataset, *, seed: int = 0, device=None) -> ImageDataset:
        device = resolve_device(device) if not isinstance(device, torch.device) else device
        cfg, t0 = self.config, time.time()
        check_images(self.name, train)
        stamp = {"kind": KIND, "data": fingerprint(train.images, train.labels), "seed": seed,
                 "channels": train.channels, "num_classes": train.num_classes,
                 "image_size": list(train.image_size), "config": training_fields(cfg)}
        cached = self._load_cached(train, stamp, device)
        models, histories, x = [], [], train.images
        for stage, target in ((1, cfg.kl_target1), (2, cfg.kl_target2)):
            if cached:
                model = cached[stage - 1]
            else:
                model, hist = train_dvae(x, train.labels, train.num_classes, cfg, target, seed=seed + 1000 * stage,
                                         device=device, desc=f"d-vae stage {stage}")
                histories.append(hist)
            models.append(model)
            x = dvae_outputs(model, x, train.labels, cfg, seed=seed + 1000 * stage + 7, device=device,
                             subtract_then_reconstruct=stage == 2)
        trained = cached is None
        if trained and self.cache:
            save_checkpoint(self.cache, {"stage1": models[0], "stage2": models[1]}, stamp)
        self.info = {"trained": trained, "cache": self.cache, "seconds": round(time.time() - t0, 2),
                     "history": histories}
        return train.with_images(x, source=f"dvae:{train.source}")

    def _load_cached(self, train, stamp, device):
        if not self.cache or not Path(self.cache).is_file():
            return None
        tensors, meta = load_checkpoint(self.cache, KIND)
        if meta.get("data") != stamp["data"]:
            raise UnlearnableError(f"{self.cache}: D-VAE cache was trained on other images or labels "
                                   f"(fingerprint {meta.get('data')} vs {stamp['data']}); remove it or pick another "
                                   f"path")
        if meta.get("config") != stamp["config"] or meta.get("seed") != stamp["seed"]:
            raise UnlearnableError(f"{self.cache}: D-VAE cache was trained with another config or seed")
        cfg = self.config
        out = []
        for prefix in ("stage1", "stage2"):
            net = DisentangleVAE(train.channels, train.num_classes, train.image_size, cfg.width, cfg.latent)
            out.append(load_module(self.cache, net, tensors, prefix).to(device).eval())
        log(f"d-vae: loaded both stages from {self.cache}")
        return tuple(out)
