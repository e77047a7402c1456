"""Targeted poisons aimed at fully connected victims from an *ensemble* of clean-trained
sources: does averaging several 2-NN sources raise what one source reaches? One JSON line
per (ensemble size, victim).

    python bench/ap_ensemble.py --seed 0 --sizes 1,3 --victims 2-nn,3-nn,linear

The parts are the library's (:mod:`unlearnable.attacks.partners`): each class's partner from
the protected subset's class means, ``size`` 2-NN sources trained 100 epochs on the clean
subset (source k from seed ``100 * seed + k``, so the ensemble of 1 is the first member of
the larger ones), and per-image targeted PGD (20 steps of 2.5 eps / 20, no random start) on
the cross-entropy of the members' averaged logits towards the partner, from a zero
perturbation. Scored as ``bench/tune_mi_ue.py`` does: the ``cpu`` preset's victim, final epoch,
on the validation split, against the clean victim of the same seed.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from tune_mi_ue import delta_stats, split_train_val, victim_scores
from unlearnable.attacks import get_attack
from unlearnable.attacks.partners import clean_trained_model, nearest_partners, refine_towards_partners
from unlearnable.data import load_dataset, quantize
from unlearnable.data.dataset import ImageDataset
from unlearnable.progress import set_quiet
from unlearnable.train.loops import TensorData


class LogitMean(torch.nn.Module):
    """The members' logits, averaged."""

    def __init__(self, members):
        super().__init__()
        self.members = torch.nn.ModuleList(members)

    def forward(self, x):
        return torch.stack([m(x) for m in self.members]).mean(0)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--sizes", default="1,3", help="ensemble sizes, comma-separated")
    ap.add_argument("--victims", default="2-nn,3-nn,linear")
    ap.add_argument("--source-epochs", type=int, default=100)
    ap.add_argument("--steps", type=int, default=20)
    args = ap.parse_args(argv)
    set_quiet(True)
    train, val = split_train_val(load_dataset("fashion-mnist").train, 5000, args.seed)
    cfg = get_attack("mi-ue-g").from_preset("cpu", device="cpu").config
    data = TensorData.from_dataset(train, "cpu")
    partner = nearest_partners(data.x, data.y, train.num_classes)
    sizes = [int(s) for s in args.sizes.split(",")]
    t0 = time.time()
    members = [clean_trained_model("source", cfg, train, seed=100 * args.seed + k, model="2-nn",
                                   epochs=args.source_epochs) for k in range(max(sizes))]
    source_s = time.time() - t0
    clean_cache = {}
    for size in sizes:
        t0 = time.time()
        delta = refine_towards_partners(LogitMean(members[:size]).eval(), data, torch.zeros(data.x.shape), partner,
                                        eps=cfg.eps, steps=args.steps, chunk=512)
        craft_s = time.time() - t0
        images = quantize(train.images, delta, cfg.eps)
        poisoned = ImageDataset(images, train.labels, train.class_names)
        stats = delta_stats(train.images, images, train.labels, round(cfg.eps * 255, 3))
        for victim in args.victims.split(","):
            scores = victim_scores(train, val, poisoned, victim, args.seed, clean_cache=clean_cache)
            print(json.dumps({"bench": "ap_ensemble", "seed": args.seed, "size": size, "victim": victim,
                              "source_epochs": args.source_epochs, "steps": args.steps,
                              "partners": partner.tolist(), **scores, "source_s": round(source_s, 1),
                              "craft_s": round(craft_s, 1), **stats}), flush=True)


if __name__ == "__main__":
    main()
