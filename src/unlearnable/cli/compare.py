"""``unlearnable compare``: the CLI over :func:`unlearnable.experiments.compare.run_compare`."""

from __future__ import annotations

from pathlib import Path

from .common import add_mi_model_flag, positive_int, seed


def register(sub) -> None:
    p = sub.add_parser("compare", help="run attacks on one dataset, a victim on each and on clean data, "
                                       "and print a Table-1-style table (accuracy, gap, MI, times)")
    p.add_argument("--data", default="fashion-mnist", help="data spec (default: the embedded Fashion-MNIST)")
    p.add_argument("--methods", help="comma list of attacks (default: every registered attack)")
    p.add_argument("--subset", type=positive_int, default=5000,
                   help="class-balanced training subset (default 5000)")
    p.add_argument("--seed", type=seed, default=0)
    p.add_argument("--preset", default="cpu", help="attack preset for every method (default cpu)")
    p.add_argument("--victim-epochs", type=positive_int, help="victim epochs (default: the cpu preset's 15)")
    p.add_argument("--mi-slices", type=positive_int, default=500,
                   help="random direction pairs for the sliced MI (default 500)")
    p.add_argument("--estimators", default="hist,ksg",
                   help="comma list of MI estimators, one MI column each: hist, hist-mm, kde, ksg, mine "
                        "(default hist,ksg)")
    add_mi_model_flag(p)
    p.add_argument("--defenses", nargs="*", metavar="ATTACKER",
                   help="also train each row under these attackers and print the worst case for the protector: "
                        "none, st-es, at-E, finetune, low-lr, probe, crop-flip[:PAD], crop[:PAD], flip, or a defense spec "
                        "(jpeg:10, bdr, blur, "
                        "ueraser, ...); given alone: none st-es jpeg:10 grayscale bdr blur ueraser at-4 finetune probe")
    p.add_argument("--prior-images", type=positive_int, default=10000,
                   help="clean training images outside the subset the prior attackers' prior is trained on "
                        "(default 10000)")
    p.add_argument("--out", default="runs/compare", help="output folder; a rerun skips the rows already in it")
    p.add_argument("--overwrite", action="store_true", help="discard the output folder and start again")
    p.set_defaults(func=cmd_compare)


def cmd_compare(args) -> None:
    from ..errors import UnlearnableError
    from ..experiments.compare import format_table, format_worst_case, parse_methods, run_compare
    from ..measure.folders import parse_estimators
    r = run_compare(args.out, data=args.data, methods=parse_methods(args.methods), subset=args.subset,
                    seed=args.seed, preset=args.preset, victim_epochs=args.victim_epochs,
                    mi_slices=args.mi_slices, estimators=parse_estimators(args.estimators),
                    mi_model=args.mi_model, attackers=args.defenses, prior_images=args.prior_images,
                    overwrite=args.overwrite)
    print(format_table(r))
    if "worst_case" in r:
        print()
        print(format_worst_case(r))
    print(f"total wall time {r['seconds']:.0f} s; results: {Path(args.out) / 'results.json'}")
    if r["failed"]:
        raise UnlearnableError(f"{len(r['failed'])} attack(s) failed: {', '.join(r['failed'])} "
                               f"(see {Path(args.out) / 'table.md'}; a rerun retries them)")
