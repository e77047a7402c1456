"""The estimator's floor under each row's MI: is the hist MI gap lost information or bias?

    python bench/mi_floor.py runs/all-seed0 --out runs/mi-floor.jsonl

On the 18-attack compare the hist MI gap tracks the accuracy gap (rho 0.81) and the KSG
gap does not (0.15). The plug-in histogram's bias grows with how concentrated the features
are, so a victim that learned a shortcut could show a hist "gap" with no information lost.
This measures that. For the clean set and each attack of a compare folder it retrains the
row's victim exactly as the compare did (its settings.json: preset, seed, epochs). It
takes g(X) and g(X') (for the clean row, the reference pairs g_clean(X) with itself), and
computes the conditional sliced MI (the compare's directions, m and seed) twice per
estimator:
  - paired: row i of X with row i of X' (what the compare reports),
  - floor: X' rows shuffled within their class, so X and X' are independent given the
    class and the true conditional MI is 0; what the estimator still reports is its bias
    for these features.
One JSON line per row as it finishes (the file resumes), then one line with the Spearman
correlation of the accuracy gap with the paired gap, with the floor gap (reference floor
minus row floor) and with the paired-minus-floor gap, per estimator. The floor-corrected
gap is a diagnostic of the estimators, not a replacement for the compare's fixed choice.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from unlearnable.data import load_dataset, read_poisoned
from unlearnable.measure import spearman
from unlearnable.measure.features import paired_features
from unlearnable.measure.gaps import MIGapMeter
from unlearnable.models.checkpoint import load_model
from unlearnable.progress import set_quiet
from unlearnable.train import train_victim, victim_preset


def within_class_shuffle(labels: np.ndarray, seed: int) -> np.ndarray:
    """A permutation of row indices that moves every row to another row of its class."""
    rng = np.random.default_rng(seed)
    perm = np.arange(len(labels))
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        perm[idx] = rng.permutation(idx)
    return perm


def mi_pair(meter: MIGapMeter, zc, zp, perm) -> dict:
    """Paired and floor SMI(zc; zp) per estimator, with the meter's (the compare's) directions."""
    return {est: {"paired": round(meter.against(est, zc, zp).mean, 5),
                  "floor": round(meter.against(est, zc, zp[perm]).mean, 5)} for est in meter.estimators}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("compare_dir", type=Path)
    p.add_argument("--out", type=Path, required=True, help="JSON lines, one per row (resumes)")
    p.add_argument("--attacks", default=None, help="comma-separated, in order (default: every row of results.json)")
    args = p.parse_args(argv)
    set_quiet(True)
    settings = json.loads((args.compare_dir / "settings.json").read_text())
    results = json.loads((args.compare_dir / "results.json").read_text())
    seed, slices, estimators = settings["seed"], settings["mi_slices"], settings["estimators"]
    vcfg = victim_preset("cpu", **settings["victim"])
    attacks = args.attacks.split(",") if args.attacks else list(results["attacks"])
    done = {}
    if args.out.is_file():
        for line in args.out.read_text().splitlines():
            row = json.loads(line)
            if "row" in row:
                done[row["row"]] = row
    first = read_poisoned(args.compare_dir / attacks[0] / "poisoned")
    clean_train, labels = first.clean, first.clean.labels
    test = load_dataset(settings["data"]).test
    perm = within_class_shuffle(labels, seed + 1)

    def emit(row: dict) -> None:
        done[row["row"]] = row
        with open(args.out, "a") as f:
            f.write(json.dumps(row) + "\n")

    clean_model, _ = load_model(args.compare_dir / "clean" / "model", device="cpu")
    # the compare's meter: reference features of the clean victim, its m, seed and directions
    meter = MIGapMeter.for_model(clean_model, clean_train, estimators=estimators, slices=slices, seed=seed)
    if "clean" not in done:
        t0 = time.time()
        emit({"row": "clean", "test_acc": results["clean"]["test_acc"],
              "mi": mi_pair(meter, meter.z_ref, meter.z_ref, perm), "seconds": round(time.time() - t0, 1)})
    for name in attacks:
        if name in done:
            continue
        t0 = time.time()
        protected = read_poisoned(args.compare_dir / name / "poisoned")
        res = train_victim(protected.poisoned, test, vcfg, seed=seed, desc=f"victim ({name})")
        zc, zp = paired_features(res.model, protected.clean, protected.poisoned)
        emit({"row": name, "test_acc": res.test_acc, "compare_test_acc": results["attacks"][name]["test_acc"],
              "mi": mi_pair(meter, zc, zp, perm), "seconds": round(time.time() - t0, 1)})
    ref = done["clean"]
    rows = [done[a] for a in attacks if a in done]
    summary = {}
    for est in estimators:
        acc_gap = [ref["test_acc"] - r["test_acc"] for r in rows]
        gaps = {"paired_gap": [ref["mi"][est]["paired"] - r["mi"][est]["paired"] for r in rows],
                "floor_gap": [ref["mi"][est]["floor"] - r["mi"][est]["floor"] for r in rows]}
        gaps["corrected_gap"] = [a - b for a, b in zip(gaps["paired_gap"], gaps["floor_gap"])]
        summary[est] = {k: spearman(acc_gap, v) for k, v in gaps.items()}
    print(json.dumps({"bench": "mi_floor", "compare_dir": str(args.compare_dir), "rows": len(rows), "seed": seed,
                      "slices": slices, "spearman": summary}))


if __name__ == "__main__":
    main()
