"""Victim accuracy against the poison ratio, and the one-class split (docs/partial-poisoning.md).

The attack (MI-UE by default) runs once, on the whole training subset, exactly as
``unlearnable poison`` does, and is written to OUT/poisoned (reused by a later run with
the same settings). Each ratio's training set is then derived by masking: the protected
image where ``select_protected(labels, ratio=R, seed=SEED)`` picks it, the clean one
elsewhere. This is the dataset that ``unlearnable poison --ratio R --seed SEED`` would
write, because ``poison`` also runs the attack on every image and only then zeroes the
perturbations outside the selection: an image's perturbation does not depend on which
images are selected (tests/test_partial_poisoning.py checks the equality). Ratio 0 is the
clean training set. ``--classes`` adds the one-class run (paper Appendix G.1) derived the
same way, and every victim then also reports its accuracy on the protected classes' test
images and on the others'.

One victim (the ``cpu`` preset unless changed) is trained per row; a JSON line is printed
per row as it finishes, then a table; OUT/results.json holds everything.

    python bench/ratio_sweep.py [--data fashion-mnist] [--subset 5000] [--seed 0]
        [--ratios 0,0.2,0.5,0.8,1] [--classes 0] [--method mi-ue] [--out runs/ratio-sweep]
        [--victim-epochs N] [--gen-epochs N] [--device auto] [--overwrite]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from unlearnable.data import load_dataset, read_poisoned
from unlearnable.data.dataset import DataSplits, ImageDataset
from unlearnable.errors import UnlearnableError
from unlearnable.fsutil import write_json
from unlearnable.poison import parse_classes, poison_dataset, select_protected
from unlearnable.progress import log
from unlearnable.train import train_victim, victim_preset
from unlearnable.train.per_class import split_accuracy


def protected_run(args, out: Path):
    """The fully protected training subset: read from ``out`` when it matches, else generated."""
    want = {"method": args.method, "seed": args.seed, "subset": args.subset}
    if out.exists() and not args.overwrite:
        p = read_poisoned(out)
        have = {k: p.manifest.get(k) for k in want}
        epochs = p.manifest.get("config", {}).get("epochs")
        if have != want or not p.perturbed_mask.all() or args.gen_epochs not in (None, epochs):
            raise UnlearnableError(f"{out} holds a different run ({have}, epochs {epochs}); "
                                   f"pass --overwrite to regenerate it")
        log(f"reusing {out} (generated in {p.manifest['timings']['generate_s']:.0f} s)")
        return p
    splits = load_dataset(args.data)
    overrides = {k: v for k, v in {"epochs": args.gen_epochs, "device": args.device}.items() if v is not None}
    poison_dataset(args.method, DataSplits(splits.train, splits.test, splits.name), out, subset=args.subset,
                   seed=args.seed, overrides=overrides, overwrite=True)
    return read_poisoned(out)


def victim_row(name, train, p, cfg, args, mask, classes):
    res = train_victim(train, p.test, cfg, seed=args.seed, desc=f"victim ({name})")
    row = {"run": name, "protected_images": int(mask.sum()), "of": len(mask),
           "test_acc": res.test_acc, "train_acc": res.train_acc, "victim_s": round(res.seconds, 1)}
    if classes:
        acc = split_accuracy(res.model, p.test, classes, bf16=cfg.bf16, channels_last=cfg.channels_last)
        row.update(test_acc_protected_classes=round(acc["protected"], 5),
                   test_acc_other_classes=None if acc["other"] is None else round(acc["other"], 5))
    print(json.dumps(row), flush=True)
    return row


def table(rows, classes) -> str:
    head = ["training data", "protected images", "test acc"]
    if classes:
        head += ["protected classes acc", "other classes acc"]
    head.append("victim time")
    pct = lambda a: "-" if a is None else f"{100 * a:.2f}%"  # noqa: E731
    body = [[r["run"], f"{r['protected_images']}/{r['of']}", pct(r["test_acc"])]
            + ([pct(r["test_acc_protected_classes"]), pct(r["test_acc_other_classes"])] if classes else [])
            + [f"{r['victim_s']:.0f} s"] for r in rows]
    w = [max(len(x[i]) for x in [head, *body]) for i in range(len(head))]
    line = lambda cells: "| " + " | ".join(c.ljust(w[i]) for i, c in enumerate(cells)) + " |"  # noqa: E731
    return "\n".join([line(head), "|" + "|".join("-" * (x + 2) for x in w) + "|", *map(line, body)])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default="fashion-mnist")
    ap.add_argument("--subset", type=int, default=5000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--method", default="mi-ue")
    ap.add_argument("--ratios", default="0,0.2,0.5,0.8,1")
    ap.add_argument("--classes", help="also the one-class run protecting these classes (indices or names)")
    ap.add_argument("--out", default="runs/ratio-sweep")
    ap.add_argument("--victim-epochs", type=int, help="victim epochs (cpu preset: 15)")
    ap.add_argument("--gen-epochs", type=int, help="attack epochs (cpu preset: 10)")
    ap.add_argument("--device", help="cpu, cuda or auto (attack and victims)")
    ap.add_argument("--overwrite", action="store_true", help="regenerate OUT/poisoned")
    args = ap.parse_args(argv)
    try:
        ratios = [float(r) for r in args.ratios.split(",")]
        if any(not 0 <= r <= 1 for r in ratios):
            raise ValueError
    except ValueError:
        ap.error(f"--ratios: a comma list of numbers in [0, 1], got {args.ratios!r}")

    t0 = time.time()
    out = Path(args.out)
    p = protected_run(args, out / "poisoned")
    labels, names = p.clean.labels, p.clean.class_names
    classes = parse_classes(args.classes, names) if args.classes else None
    cfg = victim_preset("cpu", epochs=args.victim_epochs, device=args.device)
    log(f"{len(labels)} training images, {len(p.test)} test images; victim {cfg.model}, {cfg.epochs} epochs")

    def derived(mask):
        imgs = np.where(mask[:, None, None, None], p.poisoned.images, p.clean.images)
        return ImageDataset(imgs, labels, names, source=f"{out}:masked", indices=p.clean.indices)

    runs = [(f"ratio {r:g}", select_protected(labels, ratio=r, seed=args.seed) if r > 0
             else np.zeros(len(labels), bool)) for r in ratios]
    if classes:
        runs.append((f"classes {','.join(names[c] for c in classes)}", select_protected(labels, classes=classes)))
    rows = [victim_row(name, derived(mask), p, cfg, args, mask, classes) for name, mask in runs]

    results = {"data": args.data, "method": args.method, "subset": len(labels), "seed": args.seed,
               "protected_classes": classes, "victim": cfg.model, "victim_epochs": cfg.epochs,
               "generate_s": p.manifest["timings"]["generate_s"], "rows": rows,
               "seconds": round(time.time() - t0, 1)}
    write_json(out / "results.json", results)
    print(f"{args.method} on {args.data} ({len(labels)} training images), victim {cfg.model} "
          f"({cfg.epochs} epochs), clean test set of {len(p.test)}; generation {results['generate_s']:.0f} s")
    print(table(rows, classes))
    print(f"total {results['seconds']:.0f} s; results: {out / 'results.json'}")


if __name__ == "__main__":
    try:
        main()
    except UnlearnableError as e:
        sys.stderr.write(f"ratio_sweep: error: {e}\n")
        sys.exit(2)
