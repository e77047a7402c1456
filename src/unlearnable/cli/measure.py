"""``unlearnable measure``: sliced MI between clean and poisoned features, MI gap, covariance,
separability."""

from __future__ import annotations

from .common import add_mi_model_flag, number, positive_int, seed


def register(sub) -> None:
    ms = sub.add_parser("measure", help="sliced MI between clean and poisoned features, MI gap, covariance, separability")
    ms.add_argument("--poisoned", required=True, nargs="+", metavar="DIR",
                    help="protected dataset folder(s) written by 'poison' (same images, e.g. several attacks)")
    ms.add_argument("--clean", metavar="DATA", help="clean data spec to check against (default: the clean images "
                    "recovered from the folder, poisoned - perturbation)")
    ms.add_argument("--model", default="cnn", help="checkpoint folder (model.json + model.safetensors, e.g. from "
                    "'train --out'; one g for every set), or a registry name to train now on each poisoned set and "
                    "on the clean images (default cnn)")
    add_mi_model_flag(ms, default=None, extra="; only with --model NAME")
    ms.add_argument("--estimators", default="hist,hist-mm,kde,ksg", help="comma list of hist, hist-mm, kde, ksg, mine")
    ms.add_argument("--slices", type=positive_int, help="random direction pairs m (default 2000; mine 100)")
    ms.add_argument("--seed", type=seed, default=0)
    ms.add_argument("--pooled", action="store_true", help="pool all classes instead of the class-conditional average")
    ms.add_argument("--max-per-class", type=positive_int, help="use at most this many images per class")
    ms.add_argument("--train-epochs", type=positive_int, default=8, help="epochs when --model is a registry name")
    ms.add_argument("--no-covariance", action="store_true")
    ms.add_argument("--no-separability", action="store_true")
    ms.add_argument("--acc", dest="accs", type=number, nargs="+", help="victim test accuracy per --poisoned folder (for acc gaps "
                    "and their Spearman correlation with the MI gaps)")
    ms.add_argument("--clean-acc", type=number, help="victim test accuracy on clean data (with --acc)")
    ms.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (feature extraction, training)")
    ms.add_argument("--out", help="write the full results as JSON here")
    ms.set_defaults(func=cmd_measure)


def cmd_measure(args):
    from ..data import spec_path
    from ..fsutil import check_output_file, write_json
    from ..measure.folders import format_table, parse_estimators, run_measure
    names = parse_estimators(args.estimators)
    if args.out:  # before any work: a bad --out must not cost the whole measurement
        check_output_file(args.out, inputs=[*args.poisoned, spec_path(args.clean), args.model])
    res = run_measure(args.poisoned, clean=args.clean, model=args.model, mi_model=args.mi_model,
                      estimators=names, slices=args.slices, seed=args.seed, conditional=not args.pooled,
                      max_per_class=args.max_per_class,
                      covariance=not args.no_covariance, separability=not args.no_separability, device=args.device,
                      train_epochs=args.train_epochs, accs=args.accs, clean_acc=args.clean_acc)
    print(format_table(res))
    if args.out:
        write_json(args.out, res)
        print(f"results: {args.out}")
