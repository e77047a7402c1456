"""The diffusion denoiser of the AVA and LE defenses: a small conditional U-Net, a DDPM
noise schedule with a strided reverse sampler, its training and checkpoint, and the clean
split it is trained on (disjoint from the protected images).

No pretrained weights can be downloaded here, so the denoiser is trained on the machine,
at a scale the CPU allows (docs/defenses-generative.md says where that departs from the
papers). The pieces shared with D-VAE (options, batching, the training loop, checkpoints)
are in :mod:`._generative`.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..data.dataset import fingerprint
from ..errors import UnlearnableError
from ..runtime import autocast, make_generator, to_model_input
from ._generative import check_config, fit, load_checkpoint, load_module, pad_to_multiple, save_checkpoint, seeded_init

# ---------------------------------------------------------------- a small U-Net denoiser

def _groups(c: int) -> int:
    return 8 if c % 8 == 0 else 1


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv twice, with the timestep embedding added in between (as in DDPM)."""

    def __init__(self, c_in: int, c_out: int, t_dim: int):
        super().__init__()
        self.norm1, self.conv1 = nn.GroupNorm(_groups(c_in), c_in), nn.Conv2d(c_in, c_out, 3, padding=1)
        self.temb = nn.Linear(t_dim, c_out)
        self.norm2, self.conv2 = nn.GroupNorm(_groups(c_out), c_out), nn.Conv2d(c_out, c_out, 3, padding=1)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x, temb):
        h = self.conv1(F.silu(self.norm1(x))) + self.temb(temb)[:, :, None, None]
        return self.skip(x) + self.conv2(F.silu(self.norm2(h)))


def upsample2(c_in: int, c_out: int) -> nn.Sequential:
    """x2 upsampling as a 1x1 conv to 4*c_out channels + pixel shuffle: cheap on a CPU,
    where a transposed conv or a full-resolution 3x3 conv would dominate the cost."""
    return nn.Sequential(nn.Conv2d(c_in, 4 * c_out, 1), nn.PixelShuffle(2))


class TinyUNet(nn.Module):
    """An epsilon-predicting U-Net working at H/2 and H/4, with a full-resolution output layer.

    A scaled-down DDPM U-Net (Ho et al. 2020 use 35.7M parameters, four resolutions and
    attention at 16x16). The input is folded to half resolution (pixel unshuffle), the
    residual blocks with the timestep embedding run at H/2 (width w) and H/4 (2w), and
    the output is unfolded back (pixel shuffle) and mixed with the input by one 3x3
    conv; no attention. ``width=32``: about 0.19M parameters and 15M multiply-adds per
    28x28 image, which a CPU trains in minutes. Sides that are not multiples of 4 are
    edge-padded and the output cropped back.
    """

    def __init__(self, channels: int, width: int = 32):
        super().__init__()
        w, c0, t_dim = width, 8, 4 * width
        self.width = w
        self.time_mlp = nn.Sequential(nn.Linear(w, t_dim), nn.SiLU(), nn.Linear(t_dim, t_dim))
        self.inp = nn.Sequential(nn.PixelUnshuffle(2), nn.Conv2d(4 * channels, w, 3, padding=1))
        self.enc1 = ResBlock(w, w, t_dim)
        self.down2 = nn.Conv2d(w, 2 * w, 3, stride=2, padding=1)
        self.mid = ResBlock(2 * w, 2 * w, t_dim)
        self.up2 = upsample2(2 * w, w)
        self.dec1 = ResBlock(2 * w, w, t_dim)
        self.up1 = nn.Sequential(nn.GroupNorm(_groups(w), w), nn.SiLU(), upsample2(w, c0), nn.SiLU())
        self.out = nn.Conv2d(c0 + channels, channels, 3, padding=1)
        nn.init.zeros_(self.out.weight)  # start as "predict no noise": a stable first step
        nn.init.zeros_(self.out.bias)

    def time_embedding(self, t: torch.Tensor) -> torch.Tensor:
        half = self.width // 2
        freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
        args = t.float()[:, None] * freqs[None]
        return self.time_mlp(torch.cat([torch.sin(args), torch.cos(args)], dim=1))

    def encode(self, x: torch.Tensor, t: torch.Tensor):
        """Feature maps at H/2 and H/4 (also LE's perceptual features) + time embedding."""
        temb = self.time_embedding(t)
        h1 = self.enc1(self.inp(pad_to_multiple(x, 4)), temb)
        hm = self.mid(self.down2(h1), temb)
        return [h1, hm], temb

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        (h1, hm), temb = self.encode(x, t)
        d1 = self.dec1(torch.cat([self.up2(hm), h1], dim=1), temb)
        xp = pad_to_multiple(x, 4)
        return self.out(torch.cat([self.up1(d1), xp], dim=1))[..., :x.shape[-2], :x.shape[-1]]


# ---------------------------------------------------------------- DDPM schedule and sampler

class Diffusion:
    """The DDPM forward process of Ho et al. (2020): T=1000, betas linear 1e-4 .. 0.02.

    This is the discretisation of the VP-SDE (beta_min 0.1, beta_max 20) that DiffPure and
    AVATAR use, so a diffusion time t* in [0, 1] is step ``round(t* * T)``.
    ``alpha_bar[t]`` for t = 0..T, with ``alpha_bar[0] = 1`` (the clean image).
    """

    T = 1000

    def __init__(self, beta_start: float = 1e-4, beta_end: float = 0.02):
        betas = torch.linspace(beta_start, beta_end, self.T, dtype=torch.float64)
        self.alpha_bar = torch.cat([torch.ones(1, dtype=torch.float64), torch.cumprod(1 - betas, 0)])

    def ab(self, t: int) -> float:
        return float(self.alpha_bar[int(t)])

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """x_t = sqrt(ab_t) x0 + sqrt(1 - ab_t) noise, for a per-sample step tensor ``t``."""
        ab = self.alpha_bar.to(x0.device)[t].float().view(-1, 1, 1, 1)
        return ab.sqrt() * x0 + (1 - ab).sqrt() * noise

    def noise_to(self, x0: torch.Tensor, t: int, generator: torch.Generator) -> torch.Tensor:
        noise = torch.randn(x0.shape, generator=generator).to(x0.device)
        return self.q_sample(x0, torch.full((len(x0),), int(t), device=x0.device, dtype=torch.long), noise)

    @staticmethod
    def schedule(t_from: int, steps: int) -> list[int]:
        """``steps`` evenly spaced timesteps from ``t_from`` down to 1 (fewer if t_from < steps)."""
        ts = np.unique(np.rint(np.linspace(1, t_from, min(steps, t_from))).astype(int))[::-1]
        return [int(t) for t in ts]

    def reverse(self, model: nn.Module, x: torch.Tensor, t_from: int, steps: int, *, eta: float,
                generator: torch.Generator, guide=None, bf16: bool = False, channels_last: bool = False):
        """Denoise ``x`` (at step ``t_from``) to step 0 along a strided schedule.

        The generalised DDIM update (Song et al. 2021) with stochasticity ``eta``: eta=1
        with every step is DDPM ancestral sampling, eta=0 the deterministic DDIM path.
        The predicted clean image is clipped to [-1, 1] at each step, as in DDPM.
        ``guide(x_t, t, s)``, when given, returns a shift subtracted from the mean of
        x_s (LE's conditional guidance).
        """
        ts = self.schedule(t_from, steps)
        n = len(x)
        for i, t in enumerate(ts):
            s = ts[i + 1] if i + 1 < len(ts) else 0
            ab_t, ab_s = self.ab(t), self.ab(s)
            with torch.no_grad(), autocast(x.device, bf16):
                eps = model(to_model_input(x, channels_last), torch.full((n,), t, device=x.device)).float()
            x0 = ((x - math.sqrt(1 - ab_t) * eps) / math.sqrt(ab_t)).clamp(-1, 1)
            eps = (x - math.sqrt(ab_t) * x0) / math.sqrt(1 - ab_t)
            sigma = eta * math.sqrt((1 - ab_s) / (1 - ab_t) * (1 - ab_t / ab_s))
            mean = math.sqrt(ab_s) * x0 + math.sqrt(max(1 - ab_s - sigma ** 2, 0.0)) * eps
            if guide is not None:
                mean = mean - guide(x, t, s)
            x = mean + sigma * torch.randn(x.shape, generator=generator).to(x.device) if sigma > 0 else mean
        return x


# ---------------------------------------------------------------- the denoiser: training, cache, clean data

@dataclasses.dataclass
class DenoiserConfig:
    """How the small DDPM denoiser of AVA / LE is trained (on clean images only).

    DDPM (Ho et al. 2020) trains its 35.7M-parameter U-Net for 800k steps at batch 128
    with Adam 2e-4 on all T=1000 steps. Here a 0.19M-parameter U-Net is trained for
    about 800 steps (5,000 images x 20 epochs at batch 128) with Adam 3e-3 and a cosine
    schedule (3e-3 learned far faster than 1e-3 in short Fashion-MNIST runs), and only
    on the steps the purifier visits (1..t_max): a purifier that starts at t* never asks
    the network about noisier inputs, and the narrower task is what makes a CPU-sized
    model good enough. No EMA of the weights (DDPM's 0.9999 needs far longer runs).
    """

    width: int = 32
    epochs: int = 20
    batch_size: int = 128
    lr: float = 3e-3
    n_clean: int = 5000  # clean images the denoiser is trained on (stratified subset)
    train_t_max: int = 0  # 0: the largest step the purifier uses
    bf16: bool = False  # bf16 autocast for the network (training and sampling)
    channels_last: bool = False

    def check(self, owner: str) -> None:
        check_config(owner, self, positive=("width", "epochs", "batch_size", "lr", "n_clean"), nonneg=("train_t_max",))
        if self.train_t_max > Diffusion.T:
            raise UnlearnableError(f"{owner}: train_t_max must be <= {Diffusion.T}, got {self.train_t_max}")


DENOISER_KIND = "ddpm-denoiser"


def train_denoiser(clean, cfg: DenoiserConfig, t_max: int, *, seed: int, device, desc: str = "train denoiser"):
    """Train a :class:`TinyUNet` to predict the noise of clean images at steps 1..t_max.

    Returns ``(model, history, meta)``; ``meta`` is what a checkpoint records.
    """
    diffusion = Diffusion()
    model = seeded_init(lambda: TinyUNet(clean.channels, cfg.width), seed).to(device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    gen = make_generator(seed + 1)
    x = torch.from_numpy(clean.images).permute(0, 3, 1, 2).contiguous().to(device)
    y = torch.from_numpy(clean.labels).to(device)

    def step_loss(xb, yb, epoch):
        t = torch.randint(1, t_max + 1, (len(xb),), generator=gen).to(device)
        noise = torch.randn(xb.shape, generator=gen).to(device)
        with autocast(device, cfg.bf16):
            pred = model(to_model_input(diffusion.q_sample(xb * 2 - 1, t, noise), cfg.channels_last), t)
        loss = F.mse_loss(pred.float(), noise)
        return loss, {"eps_mse": loss}

    history = fit(model, step_loss, x, y, epochs=cfg.epochs, batch_size=cfg.batch_size, lr=cfg.lr,
                  generator=gen, desc=desc)
    meta = {"kind": DENOISER_KIND, "width": cfg.width, "channels": clean.channels,
            "image_size": list(clean.image_size), "t_max": t_max, "T": Diffusion.T,
            "schedule": "linear 1e-4..0.02", "clean_fingerprint": fingerprint(clean.images),
            "clean_images": len(clean), "seed": seed, "config": dataclasses.asdict(cfg)}
    return model, history, meta


def load_denoiser(path, *, channels: int, t_needed: int, device) -> tuple[nn.Module, dict]:
    tensors, meta = load_checkpoint(path, DENOISER_KIND)
    if meta.get("channels") != channels:
        raise UnlearnableError(f"{path}: denoiser is for {meta.get('channels')}-channel images, "
                               f"the data has {channels}")
    if int(meta.get("t_max", 0)) < t_needed:
        raise UnlearnableError(f"{path}: denoiser was trained up to step {meta.get('t_max')}, "
                               f"the purifier needs step {t_needed}")
    model = load_module(path, TinyUNet(channels, int(meta["width"])), tensors, "unet")
    return model.to(device).eval(), meta


def denoiser_for(owner: str, train, *, clean, ckpt: str | None, cache: str | None, cfg: DenoiserConfig,
                 t_needed: int, seed: int, device) -> tuple[nn.Module, dict]:
    """The denoiser a diffusion defense uses: a user checkpoint, a cache hit, or one trained now."""
    path = ckpt or cache
    if path and Path(path).is_file():
        model, meta = load_denoiser(path, channels=train.channels, t_needed=t_needed, device=device)
        return model, {"denoiser": str(path), "denoiser_trained": False, "t_max": meta["t_max"]}
    if ckpt:
        raise UnlearnableError(f"{owner}: checkpoint not found: {ckpt}")
    clean_ds = resolve_clean(owner, train, clean, cfg.n_clean, seed)
    t_max = cfg.train_t_max or t_needed
    if t_max < t_needed:
        raise UnlearnableError(f"{owner}: train_t_max={t_max} is below the purifier's step {t_needed}")
    model, history, meta = train_denoiser(clean_ds, cfg, t_max, seed=seed, device=device, desc=f"{owner} denoiser")
    if cache:
        save_checkpoint(cache, {"unet": model}, meta)
    return model.eval(), {"denoiser": str(cache) if cache else None, "denoiser_trained": True,
                          "clean_images": len(clean_ds), "clean_source": clean_ds.source, "t_max": t_max,
                          "denoiser_history": history}


def _underlying_source(train) -> str:
    """The source split a dataset's images come from (a protected dataset's manifest says it)."""
    src = train.source or ""
    if src.startswith("poisoned:"):
        manifest = Path(src[len("poisoned:"):]) / "manifest.json"
        try:
            return str(json.loads(manifest.read_text()).get("source", ""))
        except (OSError, json.JSONDecodeError):
            return ""
    return src


def resolve_clean(owner: str, train, clean, n: int, seed: int):
    """The clean images a denoiser is trained on, disjoint from the protected ones.

    ``clean`` is an ImageDataset, a data spec (``load_dataset``; its training split), or
    None: then the protected images' own source split is used when it is the embedded
    Fashion-MNIST, minus the images that were protected (their source indices). Images
    of the same source split as the protected set are always excluded by index.
    """
    from ..data import ImageDataset, load_dataset

    underlying = _underlying_source(train)
    if clean is None:
        if not underlying.startswith("fashion-mnist"):
            raise UnlearnableError(
                f"defense {owner!r} needs clean images for its denoiser: pass {owner}:clean=SPEC (a dataset "
                f"disjoint from the protected images) or {owner}:ckpt=FILE.safetensors")
        clean = "fashion-mnist"
    if not isinstance(clean, ImageDataset):
        clean = load_dataset(clean).train
    if clean.images.shape[1:] != train.images.shape[1:]:
        raise UnlearnableError(f"defense {owner!r}: clean images are {clean.images.shape[1:]} but the training "
                               f"images are {train.images.shape[1:]}")
    if underlying and clean.source == underlying and train.indices is not None and len(train.indices):
        keep = np.ones(len(clean), dtype=bool)
        idx = np.asarray(train.indices)
        keep[idx[(idx >= 0) & (idx < len(clean))]] = False
        clean = clean.take(np.flatnonzero(keep))
    if len(clean) == 0:
        raise UnlearnableError(f"defense {owner!r}: no clean images left once the protected ones are excluded")
    return clean.stratified_subset(n, seed=seed)
