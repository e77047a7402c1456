"""``unlearnable demo``: MI-UE-G on a Fashion-MNIST subset, victims on clean and protected data."""

from __future__ import annotations

from pathlib import Path

from .common import add_attack_flags, add_mi_model_flag, attack_overrides, positive_int, seed


def register(sub) -> None:
    from ..attacks import attack_names
    d = sub.add_parser("demo", help="MI-UE-G on a Fashion-MNIST subset; victims on clean and protected data")
    d.add_argument("--out", default="runs/demo", help="output folder (results.json, poisoned/)")
    d.add_argument("--data", default="fashion-mnist", help="data spec (default: the embedded Fashion-MNIST)")
    d.add_argument("--subset", type=positive_int, default=5000, help="training images (default 5000)")
    d.add_argument("--seed", type=seed, default=0)
    d.add_argument("--method", default="mi-ue-g",
                   help=f"attack (default mi-ue-g; mi-ue is the paper's algorithm): {', '.join(attack_names())}")
    d.add_argument("--victim-epochs", type=positive_int, help="victim epochs (default 15)")
    add_mi_model_flag(d)
    d.add_argument("--overwrite", action="store_true", help="replace a non-empty output folder")
    add_attack_flags(d)
    d.set_defaults(func=cmd_demo)


def cmd_demo(args):
    from ..experiments.demo import format_table, run_demo
    overrides = attack_overrides(args)
    r = run_demo(args.out, data=args.data, subset=args.subset, seed=args.seed, method=args.method,
                 preset=args.preset, victim_epochs=args.victim_epochs, attack_overrides=overrides,
                 mi_model=args.mi_model, overwrite=args.overwrite)
    print(format_table(r))
    print(f"results: {Path(args.out) / 'results.json'}")
