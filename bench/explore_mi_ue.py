"""Explore MI-UE settings on the embedded data: one JSON line per variant.

    python bench/explore_mi_ue.py '{"step_size": 0.0031}' '{"pgd_augment": "crop-flip"}'

Each argument is a JSON object of MI-UE config overrides (plus optional "victim_augment",
"victim_epochs", "subset", "seed"). The clean victim is trained once per process. Used to
choose the ``cpu`` preset; the results are recorded in docs/mi-ue.md.
"""

from __future__ import annotations

import json
import sys
import time

from unlearnable.attacks import get_attack
from unlearnable.data import load_dataset, quantize
from unlearnable.data.dataset import ImageDataset
from unlearnable.progress import set_quiet
from unlearnable.train import train_victim, victim_preset


def main(argv):
    set_quiet(True)
    splits = load_dataset("fashion-mnist")
    clean_cache = {}
    for arg in argv:
        spec = json.loads(arg)
        subset = spec.pop("subset", 5000)
        seed = spec.pop("seed", 0)
        vaug = spec.pop("victim_augment", "crop-flip")
        vep = spec.pop("victim_epochs", 15)
        train = splits.train.stratified_subset(subset, seed)
        vcfg = victim_preset("cpu", augment=vaug, epochs=vep)
        key = (subset, seed, vaug, vep)
        if key not in clean_cache:
            clean_cache[key] = train_victim(train, splits.test, vcfg, seed=seed).test_acc
        t0 = time.time()
        attack = get_attack("mi-ue").from_preset("cpu", **spec)
        res = attack.generate(train, seed=seed)
        gen_s = time.time() - t0
        poisoned = ImageDataset(quantize(train.images, res.delta, attack.config.eps), train.labels,
                                train.class_names)
        v = train_victim(poisoned, splits.test, vcfg, seed=seed)
        print(json.dumps({"overrides": spec, "subset": subset, "victim_augment": vaug, "victim_epochs": vep,
                          "clean_acc": clean_cache[key], "poisoned_acc": v.test_acc,
                          "poisoned_train_acc": round(v.train_acc, 4), "gen_s": round(gen_s, 1),
                          "source_acc": [h["source_train_acc"] for h in res.info["history"]],
                          "mi_loss": [h["mi_loss"] for h in res.info["history"]]}), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
