"""``unlearnable compare`` over several seeds: mean +- std per attack and attacker, one JSON line.

    python bench/compare_seeds.py --seeds 0,1,2 --methods mi-ue-g,gue,tue,ops \\
        --attackers none,crop-flip --out runs/seeds

Runs :func:`unlearnable.experiments.compare.run_compare` once per seed into ``OUT/seed-S``
(each resumes, so an interrupted bench continues where it stopped) and prints one JSON
line: per row (clean included) and attacker the final-epoch clean test accuracy of every
seed, their mean and sample standard deviation, and the best epoch's; per attacker the
rows ranked by mean accuracy (lowest first: the strongest protection); the generation
seconds of every attack; Spearman (accuracy gap vs MI gap) per estimator and seed. The
test set is only *reported* here, never used to choose settings (bench/tune_mi_ue.py
chooses on a validation split).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

from unlearnable.experiments.compare import run_compare
from unlearnable.progress import set_quiet


def _summary(values: list[float]) -> dict:
    return {"seeds": values, "mean": statistics.fmean(values),
            "std": statistics.stdev(values) if len(values) > 1 else 0.0}


def summarise(results: dict[int, dict], attackers: list[str]) -> dict:
    """Mean and std over seeds of every row's accuracy under every attacker (``none``: the
    row's own scratch victim), and the rows ranked per attacker."""
    seeds = sorted(results)
    first = results[seeds[0]]
    rows = ["clean", *[m for m in first["methods"] if all(m in results[s]["attacks"] for s in seeds)]]
    acc, best = {}, {}
    for row in rows:
        acc[row], best[row] = {}, {}
        for a in attackers:
            if a == "none":
                cells = [results[s]["clean"] if row == "clean" else results[s]["attacks"][row] for s in seeds]
                acc[row][a] = _summary([c["test_acc"] for c in cells])
                if all("best_acc" in c for c in cells):
                    best[row][a] = _summary([c["best_acc"] for c in cells])
            else:
                by = [results[s]["worst_case"][row]["by_attacker"].get(a) for s in seeds]
                if None not in by:
                    acc[row][a] = _summary(by)
    ranking = {a: sorted((r for r in rows[1:] if a in acc[r]), key=lambda r: acc[r][a]["mean"]) for a in attackers}
    generation = {m: [results[s]["attacks"][m]["generate_s"] for s in seeds] for m in rows[1:]}
    spearman = {s: results[s]["spearman"] for s in seeds}
    return {"accuracy": acc, "best_epoch": best, "rank": ranking, "generation_s": generation,
            "spearman": spearman}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--methods", required=True, help="comma list of attacks")
    p.add_argument("--attackers", default="none", help="comma list (compare --defenses words)")
    p.add_argument("--data", default="fashion-mnist")
    p.add_argument("--subset", type=int, default=5000)
    p.add_argument("--victim-epochs", type=int, help="default: the cpu victim preset's")
    p.add_argument("--preset", default="cpu")
    p.add_argument("--estimators", default="hist,ksg")
    p.add_argument("--out", default="runs/seeds")
    args = p.parse_args(argv)
    set_quiet(True)
    seeds = [int(s) for s in args.seeds.split(",")]
    attackers = [a.strip() for a in args.attackers.split(",") if a.strip()]
    t0 = time.time()
    results = {}
    for seed in seeds:
        results[seed] = run_compare(os.path.join(args.out, f"seed-{seed}"), data=args.data,
                                    methods=args.methods.split(","), subset=args.subset,
                                    victim_epochs=args.victim_epochs, seed=seed, preset=args.preset,
                                    estimators=args.estimators.split(","), attackers=attackers)
        labels = results[seed]["attackers"]
    summary = summarise(results, labels)
    print(json.dumps({"bench": "compare_seeds", "data": args.data, "subset": args.subset, "preset": args.preset, "seeds": seeds,
                      "attackers": labels, **summary, "seconds": round(time.time() - t0, 1),
                      "load": os.getloadavg()[0]}))


if __name__ == "__main__":
    main()
