"""Throughput of one MI-UE PGD step against its floor and a naive formulation.

Prints one JSON line. For each model (the default CNN on 28x28 grey images and CIFAR
ResNet-18 on 32x32 colour images) at batch 512 it times, in the same run and interleaved:
  - floor: the same PGD step (same engine, same chunked forward) with plain cross-entropy,
  - mi_ue: the PGD step on the vectorised MI-UE loss (what the attack runs),
  - naive: the PGD step on the naive loss (B x B x D cosine broadcast, per-sample loop).
Ratios are images/s divided by images/s. The loss's memory is measured as the bytes
autograd saves for backward inside the loss (features as the leaf), at several B.

    python bench/poison_step.py [--models cnn,resnet-18] [--batch 512] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
import torch.nn.functional as F

from unlearnable.attacks.losses import mi_loss, mi_loss_naive
from unlearnable.attacks.pgd import pgd
from unlearnable.models import build_model

SHAPES = {"cnn": (1, 28), "resnet-18": (3, 32)}


def saved_bytes(loss_fn, B, D):
    z = torch.randn(B, D, requires_grad=True)
    y = torch.arange(B) % 10
    total = [0]

    def pack(t):
        total[0] += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss_fn(z, y)
    return total[0]


def time_step(model, x, y, loss_name, chunk):
    def feats(inp):
        inp = inp.contiguous(memory_format=torch.channels_last)
        return torch.cat([model.features(c) for c in inp.split(chunk)])

    if loss_name == "floor":
        fn = lambda inp: F.cross_entropy(model.head(feats(inp)), y)  # noqa: E731
    elif loss_name == "mi_ue":
        fn = lambda inp: mi_loss(feats(inp), y)  # noqa: E731
    else:
        fn = lambda inp: mi_loss_naive(feats(inp), y)  # noqa: E731
    t = time.perf_counter()
    pgd(fn, x, torch.zeros_like(x), steps=1, step_size=1 / 255, eps=8 / 255)
    return len(x) / (time.perf_counter() - t)


def bench_model(name, batch, repeats, chunk):
    c, s = SHAPES[name]
    torch.manual_seed(0)
    model = build_model(name, c, 10, s).eval().to(memory_format=torch.channels_last)
    x = torch.rand(batch, c, s, s)
    y = torch.arange(batch) % 10
    rates = {k: [] for k in ("floor", "mi_ue", "naive")}
    for k in rates:  # warm-up
        time_step(model, x, y, k, chunk)
    for _ in range(repeats):  # interleaved, so drift in machine load hits all three alike
        for k in rates:
            rates[k].append(time_step(model, x, y, k, chunk))
    med = {k: statistics.median(v) for k, v in rates.items()}
    D = model.feature_dim
    mem = {B: (saved_bytes(mi_loss, B, D), saved_bytes(mi_loss_naive, B, D)) for B in (128, 256, 512)}
    return {
        f"{name}_img_per_s": {k: round(v, 1) for k, v in med.items()},
        f"{name}_ratio_vs_floor": round(med["mi_ue"] / med["floor"], 3),
        f"{name}_ratio_vs_naive": round(med["mi_ue"] / med["naive"], 3),
        f"{name}_loss_saved_mb_b512": round(mem[512][0] / 2**20, 2),
        f"{name}_naive_loss_saved_mb_b512": round(mem[512][1] / 2**20, 2),
        # growth from B=256 to 512: ~2x means B*D dominates, ~4x B^2, ~4x also for B^2*D at fixed D
        f"{name}_loss_saved_growth_256_to_512": round(mem[512][0] / mem[256][0], 2),
        f"{name}_loss_saved_per_b2_plus_bd": round(mem[512][0] / (512 * 512 + 512 * D), 2),
        f"{name}_naive_saved_per_b2d": round(mem[512][1] / (512 * 512 * D), 2),
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="cnn,resnet-18")
    ap.add_argument("--batch", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--chunk", type=int, default=128)
    args = ap.parse_args()
    out = {"bench": "poison_step", "batch": args.batch, "threads": torch.get_num_threads(),
           "torch": torch.__version__}
    for i, name in enumerate(args.models.split(",")):
        r = bench_model(name, args.batch, args.repeats if name == "cnn" else max(1, args.repeats - 1), args.chunk)
        out.update(r)
        if i == 0:  # the contract's keys refer to the default CNN
            out["ratio_vs_floor"] = r[f"{name}_ratio_vs_floor"]
            out["ratio_vs_naive"] = r[f"{name}_ratio_vs_naive"]
    print(json.dumps(out))


if __name__ == "__main__":
    main()
