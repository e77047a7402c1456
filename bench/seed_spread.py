"""How much of a protection's seed-to-seed spread is the victim's seed, one JSON line.

    python bench/shallow_victims.py runs/seeds/seed-0 --victims cnn --seed 10 \\
        --attacks mi-ue-g,gue,tue,ops >> lines.jsonl          # per compare seed and victim seed
    python bench/seed_spread.py runs/seeds --lines lines.jsonl

``unlearnable compare --seed S`` ties the poisons' seed (subset and generation) to the
victim's: each cell is one draw of both. The extra victims of ``bench/shallow_victims.py``
(the CNN victim of the compare, retrained on the same saved poisons with other seeds) cross
them, and this bench reads the crossed table: per attack, final-epoch clean test accuracy
for every (poison seed, victim seed) pair, the compare's own cell included; its grand mean;
the mean over victims per poison seed; a one-way split of the variance into the part
between poison seeds and the part within them (the victim's); and per pair which attack
protects best (lowest accuracy). The test set is only reported.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path


def crossed_table(compare_root: Path, lines: list[dict], seeds: set[int] | None = None
                  ) -> dict[str, dict[int, dict[int, float]]]:
    """attack (clean included) -> poison seed -> victim seed -> final accuracy, from the
    finished compare runs under ``compare_root`` and the lines that retrained their victims
    (lines of other compare folders are left out); only poison ``seeds`` when given."""
    table: dict[str, dict[int, dict[int, float]]] = {}
    seed_of = {}
    for done in sorted(compare_root.glob("seed-*/results.json")):  # a seed still running has none yet
        res = json.loads(done.read_text())
        if seeds is not None and int(res["seed"]) not in seeds:
            continue
        s = seed_of[done.parent.resolve()] = int(res["seed"])
        table.setdefault("clean", {}).setdefault(s, {})[s] = res["clean"]["test_acc"]
        for name, cell in res["attacks"].items():
            table.setdefault(name, {}).setdefault(s, {})[s] = cell["test_acc"]
    for line in lines:
        s = seed_of.get(Path(line["compare_dir"]).resolve())
        for name, cells in line["rows"].items() if s is not None else ():
            table.setdefault(name, {}).setdefault(s, {})[int(line["seed"])] = cells["cnn"]["test_acc"]
    return table


def variance_split(by_seed: dict[int, dict[int, float]]) -> dict:
    """One-way ANOVA split over poison seeds (groups) of the victims' accuracies: the mean
    square between poison seeds and within them, and the share of the total sum of squares
    each explains."""
    groups = [list(v.values()) for v in by_seed.values() if len(v) > 1]
    values = [a for g in groups for a in g]
    if len(groups) < 2:
        return {}
    grand, means = statistics.fmean(values), [statistics.fmean(g) for g in groups]
    between = sum(len(g) * (m - grand) ** 2 for g, m in zip(groups, means))
    within = sum((a - m) ** 2 for g, m in zip(groups, means) for a in g)
    df_b, df_w = len(groups) - 1, len(values) - len(groups)
    total = between + within
    return {"ms_between_poison_seeds": between / df_b, "ms_within_victim_seeds": within / df_w if df_w else None,
            "share_between": between / total if total else None, "share_within": within / total if total else None}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("compare_root", type=Path, help="folder of compare runs seed-0, seed-1, ...")
    p.add_argument("--lines", type=Path, nargs="+", required=True, help="bench/shallow_victims.py JSON lines")
    p.add_argument("--attacks", default=None, help="comma list (default: every attack with a crossed cell)")
    p.add_argument("--seeds", default=None, help="comma list of poison seeds (default: every finished seed-*)")
    args = p.parse_args(argv)
    lines = [json.loads(t) for f in args.lines for t in f.read_text().splitlines() if t.strip()]
    seeds = {int(t) for t in args.seeds.split(",")} if args.seeds else None
    table = crossed_table(args.compare_root, lines, seeds)
    if "clean" not in table:
        raise SystemExit(f"{args.compare_root}: no seed-*/results.json")
    crossed = sorted(n for n, by in table.items() if n != "clean" and any(len(v) > 1 for v in by.values()))
    names = args.attacks.split(",") if args.attacks else crossed
    rows = {}
    for name in ["clean", *names]:
        by = table[name]
        values = [a for v in by.values() for a in v.values()]
        rows[name] = {"cells": {str(s): {str(v): a for v, a in sorted(vs.items())} for s, vs in sorted(by.items())},
                      "n": len(values), "mean": statistics.fmean(values),
                      "std": statistics.stdev(values) if len(values) > 1 else 0.0,
                      "mean_per_poison_seed": {str(s): statistics.fmean(vs.values()) for s, vs in sorted(by.items())},
                      **variance_split(by)}
    pairs = sorted({(s, v) for n in names for s, vs in table[n].items() for v in vs
                    if all(v in table[m].get(s, {}) for m in names)})
    wins = {n: 0 for n in names}
    for s, v in pairs:
        wins[min(names, key=lambda n: table[n][s][v])] += 1
    seed_means = {n: rows[n]["mean_per_poison_seed"] for n in names}
    seed_wins = {n: sum(1 for s in seed_means[n] if n == min(names, key=lambda m: seed_means[m].get(s, 2.0)))
                 for n in names}
    print(json.dumps({"bench": "seed_spread", "compare_root": str(args.compare_root), "rows": rows,
                      "rank_by_mean": sorted(names, key=lambda n: rows[n]["mean"]),
                      "pairs": len(pairs), "lowest_in_pairs": wins, "lowest_by_poison_seed_mean": seed_wins}))


if __name__ == "__main__":
    main()
