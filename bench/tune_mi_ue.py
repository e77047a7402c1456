"""Choose MI-UE settings on a validation split drawn from the training images: one JSON line per variant.

    python bench/tune_mi_ue.py '{}' '{"source_steps": 2, "epochs": 20}'

Each argument is a JSON object of attack config overrides, plus optional keys "method"
(default mi-ue), "preset" (cpu), "subset" (5000), "seed" (0), "victim_epochs" (15),
"victim_augment" (none) and "victim_model" (cnn; a list scores the same poisons with each
victim in turn, one line each). The protected subset is drawn as
everywhere (stratified, the seed's); the validation split is ``VAL`` other training
images (stratified, disjoint from the subset). The test set is never read: numbers here
choose settings, the docs' test-set tables report them. The clean victim is trained once
per (subset, seed, victim) in the process. ``val_final`` is the last epoch's validation
accuracy, ``val_best`` the best epoch's (an attacker who early-stops on clean labels).
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time

import numpy as np

from unlearnable.attacks import get_attack
from unlearnable.data import load_dataset, quantize
from unlearnable.data.dataset import ImageDataset
from unlearnable.progress import set_quiet
from unlearnable.train import train_victim, victim_preset

VAL = 2000


def split_train_val(train: ImageDataset, subset: int, seed: int) -> tuple[ImageDataset, ImageDataset]:
    idx = train.stratified_indices(subset, seed)
    rest = np.setdiff1d(np.arange(len(train)), idx)
    pool = train.take(rest)
    return train.take(idx), pool.take(pool.stratified_indices(VAL, seed + 1000))


def budget_use(clean: np.ndarray, images: np.ndarray) -> dict:
    """Where the written budget goes: mean |delta| (1/255) on black pixels (which admit only
    positive changes) and on the object."""
    d = np.abs(images.astype(np.int16) - clean.astype(np.int16))
    black = clean == 0
    return {"mean_abs_bg_255": round(float(d[black].mean()), 3), "mean_abs_obj_255": round(float(d[~black].mean()), 3)}


def delta_stats(clean: np.ndarray, poisoned: np.ndarray, labels: np.ndarray, eps_255: float) -> dict:
    """The written perturbation's structure: how class-consistent it is (nearest class mean,
    the means from a random half of the images; the share of its energy in the class-mean
    pattern), how smooth (the energy share that survives 2x2 average pooling: 0.25 for
    white noise, 1 for a pattern constant on 2x2 blocks), and where its budget goes
    (black background pixels, which admit only positive changes, vs the object)."""
    n = len(labels)
    d = poisoned.astype(np.float32).reshape(n, -1) - clean.astype(np.float32).reshape(n, -1)
    half = np.random.default_rng(0).random(n) < 0.5
    k = int(labels.max()) + 1
    means = np.stack([d[half & (labels == c)].mean(0) for c in range(k)])
    pred = (d[~half] @ means.T - 0.5 * (means ** 2).sum(1)).argmax(1)
    energy = float((d ** 2).sum())
    class_means = np.stack([d[labels == c].mean(0) for c in range(k)])
    h, w = clean.shape[1] // 2 * 2, clean.shape[2] // 2 * 2
    img = (poisoned.astype(np.float32) - clean.astype(np.float32))[:, :h, :w]
    pooled = img.reshape(n, h // 2, 2, w // 2, 2, -1).mean((2, 4))
    bg_frac = float((clean == 0).mean())
    return {"delta_class_mean_acc": round(float((pred == labels[~half]).mean()), 4),
            "class_mean_share": round(float((class_means[labels] ** 2).sum()) / energy, 3),
            "low_freq_share": round(float((pooled ** 2).sum()) * 4 / energy, 3),
            "mean_abs_255": round(float(np.abs(d).mean()), 3), "background_frac": round(bg_frac, 3),
            **budget_use(clean, poisoned), "eps_255": eps_255}


def victim_scores(train: ImageDataset, val: ImageDataset, poisoned: ImageDataset, model: str, seed: int, *,
                  augment: str = "none", epochs: int = 15, clean_cache: dict | None = None) -> dict:
    """The ``cpu`` preset's victim trained on the clean subset and on the poisons, scored on the
    validation split: final and best-epoch accuracy and the histories. ``clean_cache`` keeps
    the clean victim's history per (subset, seed, augment, epochs, model) across calls."""
    cfg = victim_preset("cpu", augment=augment, epochs=epochs, model=model)
    cache = {} if clean_cache is None else clean_cache
    key = (len(train), seed, augment, epochs, model)
    if key not in cache:
        cache[key] = train_victim(train, val, cfg, seed=seed).history
    hist = train_victim(poisoned, val, cfg, seed=seed).history
    accs = [h["test_acc"] for h in hist]
    return {"clean_val_final": cache[key][-1]["test_acc"], "val_final": accs[-1], "val_best": max(accs),
            "best_epoch": int(np.argmax(accs)) + 1, "val_history": accs,
            "train_acc_history": [h["train_acc"] for h in hist]}


def main(argv):
    set_quiet(True)
    splits = load_dataset("fashion-mnist")
    clean_cache = {}
    for arg in argv:
        spec = json.loads(arg)
        method, preset = spec.pop("method", "mi-ue"), spec.pop("preset", "cpu")
        subset, seed = spec.pop("subset", 5000), spec.pop("seed", 0)
        vaug, vep = spec.pop("victim_augment", "none"), spec.pop("victim_epochs", 15)
        vmodels = spec.pop("victim_model", "cnn")
        vmodels = [vmodels] if isinstance(vmodels, str) else list(vmodels)
        train, val = split_train_val(splits.train, subset, seed)
        t0 = time.time()
        attack = get_attack(method).from_preset(preset, **spec)
        res = attack.generate(train, seed=seed)
        gen_s = time.time() - t0
        images = quantize(train.images, res.delta, attack.config.eps)
        if os.environ.get("TUNE_SAVE"):  # keep the poisons to try other victims on them later
            tag = hashlib.sha1(json.dumps([method, preset, subset, seed, spec], sort_keys=True).encode()).hexdigest()[:10]
            np.save(os.path.join(os.environ["TUNE_SAVE"], f"{method}-{tag}.npy"), images)
        poisoned = ImageDataset(images, train.labels, train.class_names)
        stats = delta_stats(train.images, images, train.labels, round(attack.config.eps * 255, 3))
        for vmodel in vmodels:  # one poison, scored by each victim in turn
            scores = victim_scores(train, val, poisoned, vmodel, seed, augment=vaug, epochs=vep, clean_cache=clean_cache)
            print(json.dumps({"method": method, "overrides": spec, "seed": seed, "subset": subset, "victim": vmodel,
                              "victim_augment": vaug, **scores, "gen_s": round(gen_s, 1), **stats,
                              "gen_history": [{k: h[k] for k in h if k not in ("epoch", "seconds")}
                                              for h in res.info.get("history", [])][-3:],
                              **{k: res.info[k] for k in ("restarts", "kept_restart") if k in res.info}}), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
