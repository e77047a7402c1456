"""Can a game's own signals tell a failed mi-ue-g poison from a good one? One JSON line per game.

    python bench/selection_signal.py --seeds 0,1 --games 2 > lines.jsonl

For each validation seed, plays games 0..G-1 of the ``cpu`` preset (game r from
seed + r x ``RESTART_SEED_STRIDE``, as ``restarts`` does) and records, per epoch, the source
model's accuracy on the *clean* versions of the set's own images (the source trains on
their poisons; a user has the clean images, so no held-out image is needed). After the
game, a proxy victim (victim seed + ``PROXY_SEED``) trains on the poisons and is scored on
the set's own clean images; the outcome is the validation victim of ``tune_mi_ue.py`` (the
same split and victim seed). The test set is never read.

The per-epoch score is taken where the game checkpoints (``SourceRun.save``), in eval mode
without gradients: it draws no random number and moves no BatchNorm statistic, so the
poisons are the plain game's (the seed-0 line reproduces tune_mi_ue's preset row).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from unlearnable.attacks import get_attack
from unlearnable.attacks.mi_ue_gen import RESTART_SEED_STRIDE
from unlearnable.attacks.source import SourceRun
from unlearnable.data import load_dataset, quantize
from unlearnable.data.dataset import ImageDataset
from unlearnable.progress import set_quiet
from unlearnable.train import train_victim, victim_preset
from unlearnable.train.loops import evaluate

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from tune_mi_ue import split_train_val  # noqa: E402  (a sibling script: the same validation split)

PROXY_SEED = 7919


def scoring_save(plain_save):
    """``SourceRun.save`` that first records, in the epoch's history row, the source's
    accuracy on the clean images (``SourceRun.save = scoring_save(SourceRun.save)``)."""

    def save(self, epoch, **extra):
        self.history[-1]["source_clean_acc"] = round(evaluate(self.model, self.data), 5)
        plain_save(self, epoch, **extra)

    return save


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--games", type=int, default=2)
    ap.add_argument("--subset", type=int, default=5000)
    args = ap.parse_args(argv)
    set_quiet(True)
    SourceRun.save = scoring_save(SourceRun.save)
    splits = load_dataset("fashion-mnist")
    vcfg = victim_preset("cpu")
    attack = get_attack("mi-ue-g").from_preset("cpu")  # one game each (restarts 1): game r is seeded here
    for seed in [int(s) for s in args.seeds.split(",")]:
        train, val = split_train_val(splits.train, args.subset, seed)
        for r in range(args.games):
            t0 = time.time()
            res = attack.generate(train, seed=seed + r * RESTART_SEED_STRIDE)
            gen_s = time.time() - t0
            poisoned = ImageDataset(quantize(train.images, res.delta, attack.config.eps), train.labels,
                                    train.class_names)
            val_accs = [h["test_acc"] for h in train_victim(poisoned, val, vcfg, seed=seed).history]
            proxy = [h["test_acc"] for h in train_victim(poisoned, train, vcfg, seed=seed + PROXY_SEED).history]
            hist = res.info["history"]
            print(json.dumps({"seed": seed, "game": r, "gen_s": round(gen_s, 1),
                              "source_clean_acc": [h["source_clean_acc"] for h in hist],
                              "source_train_acc": [h["source_train_acc"] for h in hist],
                              "mi_loss": [h["mi_loss"] for h in hist],
                              "proxy_own_clean": proxy, "val_final": val_accs[-1], "val_best": max(val_accs),
                              "val_history": val_accs}), flush=True)


if __name__ == "__main__":
    main()
