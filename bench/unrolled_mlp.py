"""How far can an 8/255 poison push a 2-NN when it is crafted through the 2-NN's own
training? One JSON line per seed.

    python bench/unrolled_mlp.py --seed 0 [--outer 20 --inner 40 --inner-lr 0.5]

The upper-bound style check of item 3 of issue 13. The attack unrolls ``--inner`` steps of
full-batch gradient descent of a freshly initialised 2-NN (784-512-10, ReLU, nn.Linear's
initialisation, a new random initialisation at every outer step) on the poisoned subset,
and takes a signed-gradient *ascent* step on the perturbation of the cross-entropy that the
trained network makes on ``--held`` clean images drawn from the subset itself (a
MetaPoison-style bilevel attack, differentiated through the whole inner run). With
``--fixed-init`` every outer step starts the inner run from the same initialisation, so
the outer steps climb one objective instead of a fresh random one each time. The poisons
are then scored as in ``bench/tune_mi_ue.py``: the ``cpu`` preset's 2-NN victim (SGD, 15
epochs) trained on them, on the validation split drawn from other training images. The
test set is never read.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch
import torch.nn.functional as F

from tune_mi_ue import delta_stats, split_train_val, victim_scores
from unlearnable.data import load_dataset, quantize
from unlearnable.data.dataset import ImageDataset
from unlearnable.progress import set_quiet


def init_mlp(d: int, hidden: int, k: int, gen: torch.Generator) -> list[torch.Tensor]:
    """nn.Linear's initialisation: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weights and biases."""
    def u(shape, fan_in):
        return (torch.rand(shape, generator=gen) * 2 - 1) / fan_in ** 0.5
    return [u((d, hidden), d), u((hidden,), d), u((hidden, k), hidden), u((k,), hidden)]


def mlp(params, x):
    w1, b1, w2, b2 = params
    return F.relu(x @ w1 + b1) @ w2 + b2


def unrolled_loss(x_train, y_train, x_held, y_held, params, steps: int, lr: float) -> torch.Tensor:
    """Held-out cross-entropy after ``steps`` full-batch GD steps, differentiable in x_train."""
    for _ in range(steps):
        grads = torch.autograd.grad(F.cross_entropy(mlp(params, x_train), y_train), params, create_graph=True)
        params = [p - lr * g for p, g in zip(params, grads)]
    return F.cross_entropy(mlp(params, x_held), y_held)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--subset", type=int, default=5000)
    ap.add_argument("--outer", type=int, default=20)
    ap.add_argument("--inner", type=int, default=40)
    ap.add_argument("--inner-lr", type=float, default=0.5)
    ap.add_argument("--held", type=int, default=1000)
    ap.add_argument("--eps", type=float, default=8 / 255)
    ap.add_argument("--fixed-init", action="store_true",
                    help="one initialisation for every outer step: the inner run is the same function of the poisons")
    ap.add_argument("--momentum", type=float, default=0.0,
                    help="step on the sign of a running sum of L1-normalised gradients (0: of the gradient)")
    args = ap.parse_args()
    set_quiet(True)
    train, val = split_train_val(load_dataset("fashion-mnist").train, args.subset, args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    x = torch.from_numpy(train.images).float().div(255).flatten(1)
    y = torch.from_numpy(train.labels).long()
    mean, std = x.mean(), x.std()
    held = torch.randperm(len(y), generator=gen)[:args.held]
    x_held = (x[held] - mean) / std
    delta = torch.zeros_like(x)
    step = 2.5 * args.eps / args.outer
    history, t0 = [], time.time()
    velocity = torch.zeros_like(x)
    for i in range(args.outer):
        delta.requires_grad_(True)
        if i == 0 or not args.fixed_init:
            start = init_mlp(x.shape[1], 512, train.num_classes, gen)
        params = [p.clone().requires_grad_(True) for p in start]
        loss = unrolled_loss(((x + delta).clamp(0, 1) - mean) / std, y, x_held, y[held], params,
                             args.inner, args.inner_lr)
        (g,) = torch.autograd.grad(loss, delta)
        with torch.no_grad():  # ascent, then back into the budget and the valid pixel range
            velocity = args.momentum * velocity + g / g.abs().mean().clamp_min(1e-30)
            delta = (delta + step * velocity.sign()).clamp(-args.eps, args.eps)
            delta = (x + delta).clamp(0, 1) - x
        history.append(round(float(loss.detach()), 4))
    gen_s = time.time() - t0
    images = quantize(train.images, delta.view(train.images.shape).numpy(), args.eps)
    poisoned = ImageDataset(images, train.labels, train.class_names)
    scores = victim_scores(train, val, poisoned, "2-nn", args.seed)
    print(json.dumps({"bench": "unrolled_mlp", "seed": args.seed, "subset": args.subset, "outer": args.outer,
                      "inner": args.inner, "inner_lr": args.inner_lr, "held": args.held,
                      "fixed_init": args.fixed_init, "momentum": args.momentum, "victim": "2-nn", **scores,
                      "gap_points": round(100 * (scores["clean_val_final"] - scores["val_final"]), 2),
                      "held_ce_history": history,
                      "gen_s": round(gen_s, 1), "load": round(os.getloadavg()[0], 2),
                      **delta_stats(train.images, images, train.labels, round(args.eps * 255, 3))}), flush=True)


if __name__ == "__main__":
    main()
