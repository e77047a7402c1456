"""Is a written poison stronger when it uses more of its budget? A causal check, on the
validation split, of a correlation seen across the compare's seeds.

    python bench/amplify_poisons.py runs/seeds --method mi-ue-g --seeds 0,1,2,3,4 --gains 1,2

For every seed S, reads METHOD's saved poisons in ROOT/seed-S (the compare's subset, drawn
with seed S), multiplies the written perturbation by each gain, rounds it, clips it to the
written budget and the pixel range (gain 1 gives back the saved images), trains the `cpu`
victim (seed S, 15 epochs) on it and scores every epoch on the validation split of
bench/tune_mi_ue.py: 2,000 training images outside the subset. The test set is never read.
One JSON line: per seed and gain the final and best validation accuracy and the mean
|delta| on black pixels and on the object, in 1/255.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

from unlearnable.data import load_dataset, read_poisoned
from unlearnable.data.dataset import ImageDataset
from unlearnable.errors import UnlearnableError
from unlearnable.progress import set_quiet
from unlearnable.train import train_victim, victim_preset

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from tune_mi_ue import budget_use, split_train_val  # noqa: E402  (a sibling script: the same split and budget split)


def amplify(clean: np.ndarray, delta: np.ndarray, gain: float, levels: int) -> np.ndarray:
    """uint8 images ``clean + round(gain * delta)``, the change clipped to +-``levels`` and the
    pixels to [0, 255]. ``delta`` is the written perturbation in 1/255 (int)."""
    d = np.clip(np.rint(delta.astype(np.float64) * gain), -levels, levels)
    return np.clip(clean.astype(np.int16) + d.astype(np.int16), 0, 255).astype(np.uint8)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("root", help="a bench/compare_seeds.py --out folder (seed-S inside)")
    p.add_argument("--method", default="mi-ue-g")
    p.add_argument("--seeds", default="0,1,2,3,4")
    p.add_argument("--gains", default="1,2")
    args = p.parse_args(argv)
    set_quiet(True)
    splits = load_dataset("fashion-mnist")
    vcfg = victim_preset("cpu")
    t0, rows = time.time(), []
    for seed in (int(s) for s in args.seeds.split(",")):
        saved = read_poisoned(os.path.join(args.root, f"seed-{seed}", args.method, "poisoned"))
        train, val = split_train_val(splits.train, len(saved.delta), seed)
        if not np.array_equal(train.images, saved.clean.images):
            raise UnlearnableError(f"{args.root}/seed-{seed}: the saved poisons are not the seed's subset")
        levels = int(saved.manifest["linf_255"])
        for gain in (float(g) for g in args.gains.split(",")):
            images = amplify(train.images, saved.delta, gain, levels)
            hist = train_victim(ImageDataset(images, train.labels, train.class_names), val, vcfg, seed=seed).history
            accs = [h["test_acc"] for h in hist]
            rows.append({"seed": seed, "gain": gain, "val_final": accs[-1], "val_best": max(accs),
                         "best_epoch": int(np.argmax(accs)) + 1, **budget_use(train.images, images)})
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    print(json.dumps({"bench": "amplify_poisons", "root": args.root, "method": args.method, "victim": "cpu",
                      "split": "validation", "rows": rows, "seconds": round(time.time() - t0, 1),
                      "load": os.getloadavg()[0]}))


if __name__ == "__main__":
    main()
