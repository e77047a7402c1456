"""``unlearnable poison``: protect a dataset's training split and write it losslessly."""

from __future__ import annotations

import json

from .common import add_attack_flags, attack_overrides, positive_int, ratio, seed


def register(sub) -> None:
    from ..attacks import attack_names
    q = sub.add_parser("poison", help="protect a dataset's training split and write it losslessly")
    q.add_argument("--method", required=True, help=f"attack: {', '.join(attack_names())}")
    q.add_argument("--data", required=True, help="fashion-mnist, or a CIFAR folder, ImageFolder tree or .npz")
    q.add_argument("--out", required=True, help="output folder (must be empty unless --overwrite)")
    q.add_argument("--subset", type=positive_int, help="protect a class-balanced subset of this size")
    q.add_argument("--seed", type=seed, default=0)
    q.add_argument("--resume", action="store_true", help="continue an interrupted run from its checkpoint")
    q.add_argument("--overwrite", action="store_true", help="replace a non-empty output folder")
    q.add_argument("--classes", metavar="LIST", help="protect only these classes (comma list of indices or names, "
                   "e.g. 0 or Bag,Sneaker); the attack still sees every image (docs/partial-poisoning.md)")
    q.add_argument("--ratio", type=ratio, metavar="R", help="protect a seeded, class-stratified fraction "
                   "0 < R <= 1 of the training set (of the --classes images when given)")
    add_attack_flags(q)
    q.set_defaults(func=cmd_poison)


def cmd_poison(args):
    from ..poison import poison_dataset
    m = poison_dataset(args.method, args.data, args.out, subset=args.subset, seed=args.seed, preset=args.preset,
                       overrides=attack_overrides(args), resume=args.resume, overwrite=args.overwrite,
                       classes=args.classes, ratio=args.ratio)
    sel = m.get("selection")
    extra = {} if sel is None else {
        "protected": sel["count"], "ratio": sel["ratio"],
        "protected_classes": None if sel["protected_classes"] is None
        else [m["class_names"][c] for c in sel["protected_classes"]]}
    print(json.dumps({"out": str(args.out), "method": m["method"], "images": m["counts"]["train"], **extra,
                      "eps_255": m["eps_255"], "linf_255": m["linf_255"],
                      "generate_s": m["timings"]["generate_s"]}))
