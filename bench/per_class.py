"""Where a poisoned victim's remaining accuracy comes from, class by class: one JSON line.

    python bench/per_class.py runs/seeds --seeds 0,1,2 --attacks mi-ue-g,gue,tue

For every ``DIR/seed-S/<attack>/poisoned`` folder of ``bench/compare_seeds.py`` the bench
trains the compare's victim (the ``cpu`` preset, victim seed S, as ``unlearnable compare``)
and scores it on the clean test set class by class. Fashion-MNIST's ten classes fall into
four groups whose images differ grossly (garments, footwear, trousers, bags); the bench
reports how many test images are predicted inside their true class's group
(``group_acc``) and, per group, the class that receives most of the group's images
(the *sink*) with its share. A victim that learned the groups from the images and the
classes inside a group from the poisons sends a group's clean images to one class.

For the poisons it reports, per class, the share of the perturbation's energy in the
class's mean pattern (``share``: 1 is a class-wise pattern) and how often a poison is
nearest to its own class's mean pattern (``ncm``), so the sinks can be set against the
structure of the poisons. The test set is only reported; nothing here chooses a setting.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from unlearnable.data import load_dataset, read_poisoned
from unlearnable.progress import set_quiet
from unlearnable.train import train_victim, victim_preset
from unlearnable.train.loops import predict

GROUPS = {"garment": ("t-shirt/top", "pullover", "dress", "coat", "shirt"), "footwear": ("sandal", "sneaker", "ankle-boot"),
          "trouser": ("trouser",), "bag": ("bag",)}


def class_groups(class_names: list[str]) -> np.ndarray:
    """The group index of every class (the order of ``GROUPS``)."""
    where = {name: g for g, names in enumerate(GROUPS.values()) for name in names}
    missing = sorted(set(class_names) - set(where))
    if missing:
        raise SystemExit(f"classes outside the Fashion-MNIST groups: {missing}")
    return np.array([where[name] for name in class_names])


def confusion(labels: np.ndarray, pred: np.ndarray, k: int) -> np.ndarray:
    out = np.zeros((k, k), dtype=np.int64)
    np.add.at(out, (labels, pred), 1)
    return out


def sinks(conf: np.ndarray, group: np.ndarray, class_names: list[str]) -> dict:
    """Per group: the class that receives most of the group's test images, and its share."""
    out = {}
    for g, name in enumerate(GROUPS):
        rows = conf[group == g].sum(0)
        top = int(rows.argmax())
        out[name] = {"class": class_names[top], "share": round(float(rows[top] / rows.sum()), 4)}
    return out


def poison_structure(clean: np.ndarray, poisoned: np.ndarray, labels: np.ndarray, k: int) -> dict:
    """Per class: the class-mean pattern's share of the perturbation energy, and the rate at
    which a poison is nearest (L2) to its own class's mean pattern."""
    d = (poisoned.astype(np.float32) - clean.astype(np.float32)).reshape(len(labels), -1)
    means = np.stack([d[labels == c].mean(0) for c in range(k)])
    share = [float((means[c] ** 2).sum() * (labels == c).sum() / max((d[labels == c] ** 2).sum(), 1e-12))
             for c in range(k)]
    dist = (d ** 2).sum(1, keepdims=True) - 2 * d @ means.T + (means ** 2).sum(1)[None]
    ncm = [float((dist[labels == c].argmin(1) == c).mean()) for c in range(k)]
    return {"share": [round(v, 4) for v in share], "ncm": [round(v, 4) for v in ncm]}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("seeds_dir", type=Path)
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--attacks", default="mi-ue-g")
    args = p.parse_args(argv)
    set_quiet(True)
    t0 = time.time()
    cells, tests, cfg = [], {}, victim_preset("cpu")
    for seed in [int(s) for s in args.seeds.split(",")]:
        for attack in args.attacks.split(","):
            folder = args.seeds_dir / f"seed-{seed}" / attack / "poisoned"
            if not (folder / "manifest.json").exists():
                raise SystemExit(f"{folder}: no poisoned set (run bench/compare_seeds.py first)")
            ps = read_poisoned(folder)
            spec = ps.manifest["data"]
            if spec not in tests:  # every folder of a compare names the same test set: read it once
                tests[spec] = load_dataset(spec).test
            test = tests[spec]
            names, k = test.class_names, test.num_classes
            res = train_victim(ps.poisoned, test, cfg, seed=seed, desc=f"victim ({attack})")
            pred = predict(res.model, test.images, cfg.channels_last)
            conf = confusion(test.labels, pred, k)
            group = class_groups(names)
            per_class = conf.diagonal() / conf.sum(1)
            cells.append({"seed": seed, "attack": attack, "test_acc": round(float(conf.trace() / len(pred)), 4),
                          "victim_test_acc": round(res.test_acc, 4),
                          "per_class": [round(float(v), 4) for v in per_class],
                          "group_acc": round(float((group[pred] == group[test.labels]).mean()), 4),
                          "sinks": sinks(conf, group, names),
                          **poison_structure(ps.clean.images, ps.poisoned.images, ps.clean.labels, k),
                          "confusion": conf.tolist()})
            print(json.dumps({k_: cells[-1][k_] for k_ in ("seed", "attack", "test_acc", "group_acc", "sinks")}),
                  flush=True)
    print(json.dumps({"bench": "per_class", "classes": names, "groups": GROUPS, "cells": cells,
                      "seconds": round(time.time() - t0, 1)}))


if __name__ == "__main__":
    main()
