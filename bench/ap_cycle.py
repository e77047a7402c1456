"""Targeted adversarial poisons aimed at a fully connected victim, with the target class
chosen as each class's nearest neighbour instead of ``y + 1``: one JSON line per victim.

    python bench/ap_cycle.py --seed 0 --cycle nearest-pairs --source-epochs 100 --victims linear,2-nn,3-nn

``ap`` pushes every image of class y towards the class after it, ``(y + 1) mod K``. On
Fashion-MNIST that sends T-shirts towards trousers and coats towards sandals: the far
classes, where an 8/255 change moves a shallow model least. The targets here come from the
protected subset's own class means (pixel space; no held-out image is read):

- ``--cycle nearest-mean``: one cycle that walks from class 0 to the nearest unvisited class
  mean; each class targets the next class on it.
- ``--cycle nearest-pairs``: the classes paired greedily by class-mean distance (closest pair
  first); each class targets its partner, so the two swap.
- ``--cycle shift``: the identity, i.e. the registry's ``ap`` itself (the same line as
  ``bench/tune_mi_ue.py`` gives).

The registry's ``ap`` is run unchanged on the subset relabelled by each class's position in
the order, so that its ``y + shift`` (shift 1, or K/2 for pairs) is the target; the poisons
are then paired with the true labels again. ``--pattern class-mean`` uses no network: each
image of class y moves eps per pixel towards its target's class mean (the sign of the
difference of the two means), the linear-model reading of the same idea.

Scored as in ``bench/tune_mi_ue.py``: the ``cpu`` preset's victim on the validation split,
final epoch, against the clean victim of the same seed. ``--test`` scores on the test set
instead, for a setting already chosen (the ``clean_val_*``/``val_*`` keys then hold test
accuracies; ``scored_on`` says which).
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from tune_mi_ue import delta_stats, split_train_val, victim_scores
from unlearnable.attacks import get_attack, partners
from unlearnable.data import load_dataset, quantize
from unlearnable.data.dataset import ImageDataset
from unlearnable.progress import set_quiet


def class_means(images: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """(K, ...) the mean image of each class, in float64 (the library's, on the raw pixels)."""
    k = int(labels.max()) + 1
    flat = torch.from_numpy(images).flatten(1).double()
    return partners.class_means(flat, torch.from_numpy(labels).long(), k).numpy().reshape(k, *images.shape[1:])


def mean_distances(images: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """(K, K) squared distances between the class means (the library's, on the raw pixels)."""
    return partners.class_mean_distances(torch.from_numpy(images), torch.from_numpy(labels).long(),
                                int(labels.max()) + 1).numpy()


def nearest_mean_cycle(images: np.ndarray, labels: np.ndarray) -> list[int]:
    """Classes in visiting order: from class 0, always on to the nearest unvisited class mean."""
    dist = mean_distances(images, labels)
    order, left = [0], set(range(1, len(dist)))
    while left:
        nxt = min(left, key=lambda c: dist[order[-1], c])
        order.append(nxt)
        left.remove(nxt)
    return order


def nearest_mean_pairs(images: np.ndarray, labels: np.ndarray) -> list[int]:
    """Classes paired greedily by class-mean distance (closest pair first; the library's
    :func:`~unlearnable.attacks.partners.greedy_pairs`, which ``mi-ue-g``'s partner term
    uses), listed as ``[a_1 .. a_m, b_1 .. b_m]`` so that a shift of m maps each class to
    its partner."""
    dist = mean_distances(images, labels)
    if len(dist) % 2:
        raise SystemExit(f"nearest-pairs needs an even number of classes, not {len(dist)}")
    pairs = partners.greedy_pairs(torch.from_numpy(dist))
    return [a for a, _ in pairs] + [b for _, b in pairs]


ORDERS = {"shift": lambda images, labels: list(range(int(labels.max()) + 1)),
          "nearest-mean": nearest_mean_cycle, "nearest-pairs": nearest_mean_pairs}


def target_classes(kind: str, images: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, int, dict]:
    """The relabelling (each class's position in the order), the shift ``ap`` is run with, and
    the target class of each true class that the two give together."""
    order = ORDERS[kind](images, labels)
    k = len(order)
    shift = k // 2 if kind == "nearest-pairs" else 1
    position = np.empty(k, dtype=np.int64)
    position[order] = np.arange(k)
    return position, shift, {int(c): int(order[(i + shift) % k]) for i, c in enumerate(order)}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cycle", choices=tuple(ORDERS), default="nearest-mean")
    p.add_argument("--source", default="2-nn")
    p.add_argument("--pgd-steps", type=int, default=20)
    p.add_argument("--source-epochs", type=int, default=8)
    p.add_argument("--pattern", choices=("ap", "class-mean"), default="ap")
    p.add_argument("--victims", default="2-nn,3-nn")
    p.add_argument("--test", action="store_true",
                   help="score on the test set (reporting a chosen setting), not on the validation split")
    args = p.parse_args()
    set_quiet(True)
    splits = load_dataset("fashion-mnist")
    train, val = split_train_val(splits.train, 5000, args.seed)
    scored_on = splits.test if args.test else val
    k = train.num_classes
    position, shift, target = target_classes(args.cycle, train.images, train.labels)
    relabelled = ImageDataset(train.images, position[train.labels], list(train.class_names))
    overrides = {"model": args.source, "train_augment": "none", "pgd_augment": "none", "pgd_steps": args.pgd_steps,
                 "target_shift": shift, "epochs": args.source_epochs}
    t0 = time.time()
    attack = get_attack("ap").from_preset("cpu", **overrides)
    if args.pattern == "ap":
        delta = attack.generate(relabelled, seed=args.seed).delta
    else:  # no network: every image of class y moves eps towards the target's class mean, pixel by pixel
        means = class_means(train.images, train.labels)
        towards = np.sign(means[[target[c] for c in range(k)]] - means)
        delta = attack.config.eps * towards[train.labels]
        overrides = {}
    gen_s = time.time() - t0
    images = quantize(train.images, delta, attack.config.eps)
    poisoned = ImageDataset(images, train.labels, train.class_names)
    stats = delta_stats(train.images, images, train.labels, round(attack.config.eps * 255, 3))
    clean_cache = {}
    for victim in args.victims.split(","):
        scores = victim_scores(train, scored_on, poisoned, victim, args.seed, clean_cache=clean_cache)
        print(json.dumps({"method": args.pattern, "cycle": args.cycle, "target": target, "overrides": overrides,
                          "seed": args.seed, "victim": victim,
                          "scored_on": "test" if args.test else "validation", **scores, "gen_s": round(gen_s, 1), **stats}), flush=True)


if __name__ == "__main__":
    main()
