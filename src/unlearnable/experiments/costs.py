"""A simple cost model for ``unlearnable run --dry-run`` (documented in docs/experiments.md).

Model compute is counted in image passes: a training step or an input-gradient step
costs 3 forward FLOPs per image, an evaluation 1. Forward FLOPs per image are counted
once per (model, input shape) with ``torch.utils.flop_counter`` on one image, so any
registered model is covered. Time = FLOPs / rate + batches x overhead, with

    CPU:  rate 5e10 FLOP/s per thread (torch.get_num_threads()), overhead 2 ms per batch
    CUDA: rate 2e13 FLOP/s, overhead 4 ms per batch

(the CPU figures are what the 4-conv CNN reaches on the 2-core development machine:
about 1,400 training images per second at 73 MFLOP each). Passes per cell:

- victim: epochs x (train images x 3 x protocol factor + test images), the protocol
  factor being 1 + PGD steps for ``at`` (option ``at_steps``, default 10) and 3 for
  ``simclr``; data defenses add a per-image cost (JPEG, OP) or a fixed model-training
  cost (D-VAE, AVA, LE: 20 victim epochs' worth).
- poison: from the resolved attack config: source-model training (``epochs`` passes, or
  ``epochs`` x ``train_steps`` batches for EM-style rounds, x (1 + ``adv_steps``) for
  adversarial training) plus crafting (``pgd_steps`` per image, every epoch for min-min
  attacks, x ``eot_samples`` x (1 + ``adv_steps``) for REM); attacks without a model
  (random, ar, lsp, ops) cost 1 microsecond per pixel; NTGA costs its kernel products.
- mi: slices x classes x a per-slice cost proportional to the samples per class (per
  100 samples: hist and hist-mm 0.12 ms, kde 1 ms, ksg 0.24 ms x log-factor); MINE trains
  one network per class and chunk of <= 25 slices, 0.4 s + 30 ms per slice and 100
  samples; + 0.3 s for the features. Covariance 0.6 s; separability from the size of
  the L-BFGS problem. These MI figures were measured on the development machine while
  it was shared (load 8 on 2 cores) and divided by the slowdown the same load caused
  against the attacks' cost model (about 4.5x): rougher than the rest.

The model is rough by design. Once cells of a kind have finished in a run directory,
the dry run multiplies the remaining estimates of that kind by the median ratio of
measured to estimated time of the finished ones (shown as "calibrated").
"""

from __future__ import annotations

import math

import numpy as np

_FLOPS: dict = {}
_MI_MS_PER_100 = {"hist": 0.12, "hist-mm": 0.12, "kde": 1.0, "ksg": 0.24}  # per slice and class, 100 samples
_DEFENSE_PER_IMAGE_S = {"jpeg": 2e-4, "grayscale": 1e-6, "op": 1e-4}
_DEFENSE_VICTIM_EPOCHS = {"dvae": 20, "ava": 20, "le": 20, "ueraser": 0}


def forward_flops(model: str, channels: int, classes: int, size: int) -> float:
    """Forward FLOPs of one image through a registered model (cached)."""
    key = (model, channels, classes, size)
    if key not in _FLOPS:
        import torch
        from torch.utils.flop_counter import FlopCounterMode

        from ..models import build_model
        try:
            net = build_model(model, channels, classes, size).eval()
            with torch.no_grad(), FlopCounterMode(display=False) as fc:
                net(torch.zeros(1, channels, size, size))
            _FLOPS[key] = float(max(fc.get_total_flops(), 1e4))
        except Exception:  # noqa: BLE001 - an unregistered/unbuildable model costs like the CNN
            _FLOPS[key] = 2.4e7 * (size * size * channels) / 784
    return _FLOPS[key]


def _rate(device: str) -> tuple[float, float]:
    if device.startswith("cuda"):
        return 2e13, 4e-3
    import torch
    return 5e10 * max(1, torch.get_num_threads()), 2e-3


def _seconds(device: str, flops: float, batches: float) -> float:
    rate, overhead = _rate(device)
    return flops / rate + batches * overhead


def estimate(t, data, device: str) -> float:
    """Estimated seconds for task ``t`` (a runner Task) on ``device``."""
    if t.unavailable is not None:
        return 0.0
    n, n_test = len(data.train), len(data.test)
    c, k, size = data.train.channels, data.train.num_classes, data.train.image_size[0]
    p = t.params
    if t.kind == "victim":
        v, proto = p["victim"], p["protocol"]
        from ..train import victim_preset
        from .plan import victim_settings
        preset, opts = victim_settings(v, proto)
        cfg = victim_preset(preset, **opts)
        f = forward_flops(cfg.model, c, k, size)
        factor = 1.0
        if proto["name"] == "at":
            steps = proto["options"].get("at_steps", getattr(cfg, "protocol_options", {}).get("at_steps", 10))
            factor = 1 + int(steps)
        elif proto["name"] == "simclr":
            factor = 3.0
        extra_epochs, per_image = 0.0, 0.0
        if p["defense"] != "none":
            for part in p["defense"].split(","):
                name = part.partition(":")[0]
                per_image += _DEFENSE_PER_IMAGE_S.get(name, 0.0)
                extra_epochs += _DEFENSE_VICTIM_EPOCHS.get(name, 0)
                if name == "ueraser":
                    factor *= 5
        epochs = cfg.epochs + extra_epochs
        flops = epochs * (n * 3 * f * factor + n_test * f)
        batches = epochs * (n / cfg.batch_size * factor + n_test / 256)
        return _seconds(device, flops, batches) + per_image * n
    if t.kind == "poison":
        return _poison_seconds(p, n, c, k, size, device)
    if t.kind == "mi":
        npc = min(p["max_per_class"] or n, max(1, n // max(1, k)))
        classes, per = (k, npc) if p["conditional"] else (1, npc * k)
        m = p["m"]
        if p["estimator"] == "mine":  # a network per chunk of <= 25 slices, 500 iterations each
            chunks = -(-m // 25)
            ms = chunks * (400.0 + 30.0 * min(m, 25) * per / 100)
        else:
            ms = m * _MI_MS_PER_100[p["estimator"]] * per / 100 * max(1.0, math.log(per) / math.log(100))
        return classes * ms / 1000 + 0.3
    if t.kind == "covariance":
        return 0.6
    if t.kind == "separability":
        return 3 * 200 * 2 * n * c * size * size * k * 4 / 5e10 + 1.0
    return 1.0


def _poison_seconds(p: dict, n: int, c: int, k: int, size: int, device: str) -> float:
    import dataclasses

    from ..attacks import get_attack
    cfg = dataclasses.asdict(get_attack(p["method"]).from_preset(p["preset"], **p["options"]).config)
    if p["method"] == "ntga":
        block, val = cfg.get("block_size", 512), cfg.get("val_size", 1024)
        d = c * size * size
        # kernel products and the solve, forward and backward (x3 measured against the formula's x1)
        flops = 3 * cfg.get("pgd_steps", 10) * (n / block) * 3 * ((block + val) * block * d * 2 + (block + val) ** 3)
        return _seconds(device, flops, cfg.get("pgd_steps", 10) * n / block)
    if "model" not in cfg:
        return 1e-6 * n * c * size * size + 0.5
    f = forward_flops(cfg["model"], c, k, size)
    epochs, bs = cfg.get("epochs", 1), cfg.get("batch_size", 256)
    adv = 1 + cfg.get("adv_steps", 0) if cfg.get("inner", "pgd") == "pgd" else 1
    # TUE: two contrastive views of every image, and x2.3 measured against this count
    views = 4.6 if p["method"] == "tue" else 1
    if "inner_steps" in cfg:  # GUE: per batch, inner best-response steps plus both players' updates
        train = epochs * n * (cfg["inner_steps"] + 7)  # (+7: measured; the formula's +3 counts passes only)
        craft = n
    elif "train_steps" in cfg:  # EM-style rounds: a few source batches, then every poison, every round
        # x1.5: measured against this count for em, em-class, rem and sem (per-round accuracy pass,
        # class-wise averaging, augmentation)
        train = 1.5 * epochs * min(cfg["train_steps"] * bs, n) * adv * views
        craft = 1.5 * epochs * n * cfg.get("pgd_steps", 1) * cfg.get("eot_samples", 1) * adv * views
    elif p["method"] in ("mi-ue", "a-mi-ue"):  # one training pass + a poison pass per epoch
        train = epochs * n
        craft = epochs * n * cfg.get("pgd_steps", 1)
    else:  # train a source model, then craft once (AP, ENTF)
        train = epochs * n * (1 + cfg.get("adv_steps", 0))
        craft = n * cfg.get("pgd_steps", 1)
    return _seconds(device, 3 * f * (train + craft), (train + craft) / bs)


def calibrate(tasks, results: dict) -> dict:
    """kind -> median(measured / estimated) over the finished cells of that kind."""
    ratios: dict = {}
    for t in tasks:
        rec = results.get(t.key)
        if rec is None or t.estimate_s <= 0 or "task_seconds" not in rec:
            continue
        ratios.setdefault(t.kind, []).append(float(rec["task_seconds"]) / t.estimate_s)
    return {k: float(np.median(v)) for k, v in ratios.items() if v}
