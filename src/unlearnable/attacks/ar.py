"""AR: autoregressive perturbations (Sandoval-Segura, Singla, Geiping, Goldblum, Goldstein
and Jacobs, "Autoregressive Perturbations for Data Poisoning", NeurIPS 2022).

No model and no optimisation. Each class k gets an AR process: per channel, a
``window`` x ``window`` filter whose bottom-right tap (the pixel being generated) is
zero and whose taps sum to one. Every image of class k gets its own sample of that
process: the first ``window - 1`` rows and columns are Gaussian noise, and every
other pixel is the filter's combination of the already generated pixels above and to
its left. The samples are generated ``margin`` pixels larger than the image (plus the
start-up rows and columns) and the bottom-right H x W window is kept, so the start-up
noise and the transient are cropped away; each image's perturbation is then scaled
into the budget.

The filter is a perfect linear predictor of its own process (zero residual), which a
convolution picks up at once: a shortcut. Defaults from the paper: 3x3 filters, one
per class, taps sampled from N(0, 1) and normalised to sum to one per channel,
generated with a margin and cropped. The paper scales to an L2 norm of 1 on CIFAR-10,
a root mean square of 0.57 x 8/255 per value; for the L-inf threat model of the other
attacks here, the default ``scale="rms"`` scales each image's perturbation to an RMS of
``rms`` x eps (0.5) and clips the few values beyond eps, and ``scale="max"`` scales so
that the largest value is eps (the exact AR shape, most values far below the budget).

Our choices: ``margin`` 4 (as the reference code's 36 -> 32 crop at CIFAR size; the
start-up rows and columns come on top); a filter is rejected and redrawn when a test
sample is not finite or its energy is not spread over the image (largest / smallest
RMS over a 4x4 grid of blocks above ``max_block_ratio``), since such processes blow up
or die out and leave a corner as the whole perturbation. Filters are drawn and checked
per channel (about one draw in four passes, at 32 and at 224 pixels).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from ..errors import UnlearnableError
from ..runtime import make_generator, resolve_device
from ..train.loops import batches
from .base import Attack, AttackResult, check_eps, register_attack, unchanged_presets
from .pgd import project_dataset


@dataclass
class ARConfig:
    eps: float = 8 / 255
    window: int = 3
    margin: int = 4
    scale: str = "rms"  # "rms": RMS = rms * eps per image, then clip to eps; "max": max |delta| = eps
    rms: float = 0.5
    max_block_ratio: float = 20.0
    max_tries: int = 2000
    batch_size: int = 512
    device: str = "auto"

    def validate(self):
        check_eps(self.eps)
        if self.window < 2 or self.margin < 0 or self.batch_size <= 0 or self.max_tries <= 0:
            raise UnlearnableError("ar: window must be >= 2, margin >= 0, batch_size and max_tries positive")
        if self.scale not in SCALES:
            raise UnlearnableError(f"ar: scale must be one of {SCALES}, got {self.scale!r}")
        if self.rms <= 0 or self.max_block_ratio <= 1:
            raise UnlearnableError("ar: rms must be positive and max_block_ratio above 1")


def ar_generate(coefs: torch.Tensor, size: tuple[int, int], margin: int, gen: torch.Generator) -> torch.Tensor:
    """Samples of AR processes: ``coefs`` (B, C, w, w), one filter per sample and channel.

    Returns (B, C, H, W): generated at (H + margin, W + margin) plus the ``w - 1``
    start-up rows and columns of noise, keeping the bottom-right H x W. Pixels on one anti-diagonal depend
    only on earlier anti-diagonals, so each anti-diagonal is one vectorised step.
    """
    b, c, w, _ = coefs.shape
    h_img, w_img = size
    hh, ww = h_img + margin + w - 1, w_img + margin + w - 1
    x = torch.randn((b, c, hh, ww), generator=gen, dtype=coefs.dtype).to(coefs.device)
    taps = coefs.reshape(b, c, 1, w * w)
    di = torch.arange(w, device=coefs.device).repeat_interleave(w) - (w - 1)  # row offsets of the taps
    dj = torch.arange(w, device=coefs.device).repeat(w) - (w - 1)
    for t in range(2 * (w - 1), hh + ww - 1):
        i = torch.arange(max(w - 1, t - ww + 1), min(hh - 1, t - (w - 1)) + 1, device=coefs.device)
        if i.numel() == 0:
            continue
        j = t - i
        win = x[:, :, i[:, None] + di, j[:, None] + dj]  # (B, C, L, w*w)
        x[:, :, i, j] = (win * taps).sum(-1)
    return x[:, :, hh - h_img:, ww - w_img:]


SCALES = ("rms", "max")


def scale_to_budget(p: torch.Tensor, eps: float, scale: str, rms: float) -> torch.Tensor:
    """Scale each image's pattern into the L-inf budget (float32 out).

    ``"max"``: largest |value| = eps, the shape kept exactly. ``"rms"``: root mean square
    = ``rms * eps``, then values beyond eps are clipped (uses more of the budget).
    """
    p = p.double()
    if scale == "max":
        p = p * (eps / p.abs().amax(dim=(1, 2, 3), keepdim=True).clamp_min(1e-300))
    else:
        p = p * (rms * eps / p.pow(2).mean(dim=(1, 2, 3), keepdim=True).sqrt().clamp_min(1e-300))
    return p.float().clamp_(-eps, eps)


def sample_filter(window: int, gen: torch.Generator) -> torch.Tensor:
    """One random AR filter: N(0, 1) taps, the current pixel's tap 0, taps summing to 1."""
    f = torch.randn(window * window, generator=gen, dtype=torch.float64)
    f[-1] = 0
    f = f / f.sum()
    return f.reshape(window, window).float()


def spread_ok(p: torch.Tensor, max_ratio: float) -> bool:
    """Finite, and energy spread over the image: block RMS ratio over a 4x4 grid <= max_ratio."""
    if not torch.isfinite(p).all() or p.abs().max() > 1e30:
        return False
    n, c, h, w = p.shape
    g = min(4, h, w)
    hs, ws = h // g, w // g
    blocks = p[:, :, :hs * g, :ws * g].double().reshape(n, c, g, hs, g, ws).pow(2).mean(dim=(1, 3, 5)).sqrt()
    return bool((blocks.max() / blocks.min().clamp_min(1e-300)) <= max_ratio)


@register_attack
class AR(Attack):
    name = "ar"
    Config = ARConfig
    presets = unchanged_presets(ARConfig)

    def generate(self, train, *, seed: int = 0, workdir=None, resume: bool = False) -> AttackResult:
        cfg = self.config
        device = resolve_device(cfg.device)
        gen = make_generator(seed)
        size = train.image_size
        filters, tries = [], []
        for k in range(train.num_classes):
            per_channel = []
            for ch in range(train.channels):
                for attempt in range(1, cfg.max_tries + 1):
                    f = sample_filter(cfg.window, gen)
                    test = ar_generate(f.expand(4, 1, -1, -1).to(device), size, cfg.margin, gen)
                    if spread_ok(test, cfg.max_block_ratio):
                        per_channel.append(f)
                        tries.append(attempt)
                        break
                else:
                    raise UnlearnableError(f"ar: no stable AR filter found for class {k} in {cfg.max_tries} "
                                           f"draws; raise max_block_ratio or max_tries")
            filters.append(torch.stack(per_channel))
        filters = torch.stack(filters).to(device)  # (K, C, w, w)
        labels = torch.from_numpy(train.labels)
        delta = torch.empty((len(train), train.channels, *size), dtype=torch.float32)
        for idx in batches(len(train), cfg.batch_size, None, "cpu"):
            p = ar_generate(filters[labels[idx].to(device)], size, cfg.margin, gen)
            delta[idx] = scale_to_budget(p, cfg.eps, cfg.scale, cfg.rms).cpu()
        return AttackResult(delta=project_dataset(train.images, delta, cfg.eps),
                            info={"config": asdict(cfg), "filters": filters.cpu().tolist(), "draws": tries})
