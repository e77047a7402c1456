"""``unlearnable <command>``: a thin layer over the library.

Every user error ends as one line on stderr (``unlearnable: error: ...``) and exit 2.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from .errors import UnlearnableError


def _number(text: str) -> float:
    """A finite float: NaN and infinity pass every range check, so they are refused here."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
    return value


def _eps(text: str) -> float:
    """Budgets are given in 1/255 units (``8`` or ``8/255``); returned in pixel units.

    Errors speak in the flag's own unit: ``--eps 300`` is "300/255", not "1.176"."""
    num, sep, den = text.partition("/")
    n255 = _number(num)
    if sep:
        d = _number(den)
        if d == 0:
            raise argparse.ArgumentTypeError(f"not a budget: {text!r}")
        n255 = n255 * 255.0 / d
    if not 0 < n255 <= 255:
        raise argparse.ArgumentTypeError(f"must be in (0, 255] (1/255 units), got {text}")
    return n255 / 255.0


def _ratio(text: str) -> float:
    v = _number(text)
    if not 0 < v <= 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1]: {text}")
    return v


def _positive_number(text: str) -> float:
    v = _number(text)
    if v <= 0:
        raise argparse.ArgumentTypeError(f"must be positive: {text}")
    return v


def _fraction(text: str) -> float:
    """A proportion such as an accuracy, 0..1."""
    v = _number(text)
    if not 0 <= v <= 1:
        raise argparse.ArgumentTypeError(f"must be in [0, 1]: {text}")
    return v


def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if v <= 0:
        raise argparse.ArgumentTypeError(f"must be positive: {text}")
    return v


def _seed(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if not 0 <= v < 2**63:
        raise argparse.ArgumentTypeError(f"must be a non-negative integer below 2^63, got {text}")
    return v


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2
        sys.stderr.write(f"unlearnable: error: {message}\n")
        sys.exit(2)


def _add_attack_flags(p):
    p.add_argument("--preset", default="cpu", help="attack preset: cpu (default), paper-cifar10, ...")
    p.add_argument("--eps", type=_eps, help="L-inf budget in 1/255 units (default 8)")
    p.add_argument("--epochs", type=_positive_int, help="generation epochs")
    p.add_argument("--steps", type=_positive_int, dest="pgd_steps", help="PGD steps per batch and epoch")
    p.add_argument("--step-size", type=_eps, help="PGD step in 1/255 units")
    p.add_argument("--batch-size", type=_positive_int, help="generation batch size")
    p.add_argument("--lr", type=_positive_number, help="source-model learning rate")
    p.add_argument("--model", help="source model (registry name, e.g. cnn, resnet-18)")
    p.add_argument("--device", help="cpu, cuda, cuda:N or auto")
    p.add_argument("--bf16", action="store_true", default=None, help="bf16 autocast for the model (perturbation stays fp32)")
    p.add_argument("--channels-last", action="store_true", default=None, help="channels_last memory format")


def _add_mi_model_flag(p, default="victim", extra=""):
    p.add_argument("--mi-model", choices=("victim", "clean"), default=default,
                   help="network g for the MI gap: victim = the victim trained on each set, the paper's g "
                        "(default; clean reference from the clean victim); clean = the clean victim for every set "
                        "(not the paper's definition)" + extra)


def _attack_overrides(args) -> dict:
    keys = ("eps", "epochs", "pgd_steps", "step_size", "batch_size", "lr", "model", "device", "bf16", "channels_last")
    return {k: getattr(args, k) for k in keys if getattr(args, k, None) is not None}


def build_parser() -> argparse.ArgumentParser:
    from .attacks import attack_names

    p = _Parser(prog="unlearnable", description="Make image data unlearnable, test the protection, measure why.")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars or status lines")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    d = sub.add_parser("demo", help="MI-UE-G on a Fashion-MNIST subset; victims on clean and protected data")
    d.add_argument("--out", default="runs/demo", help="output folder (results.json, poisoned/)")
    d.add_argument("--data", default="fashion-mnist", help="data spec (default: the embedded Fashion-MNIST)")
    d.add_argument("--subset", type=_positive_int, default=5000, help="training images (default 5000)")
    d.add_argument("--seed", type=_seed, default=0)
    d.add_argument("--method", default="mi-ue-g",
                   help=f"attack (default mi-ue-g; mi-ue is the paper's algorithm): {', '.join(attack_names())}")
    d.add_argument("--victim-epochs", type=_positive_int, help="victim epochs (default 15)")
    _add_mi_model_flag(d)
    d.add_argument("--overwrite", action="store_true", help="replace a non-empty output folder")
    _add_attack_flags(d)

    q = sub.add_parser("poison", help="protect a dataset's training split and write it losslessly")
    q.add_argument("--method", required=True, help=f"attack: {', '.join(attack_names())}")
    q.add_argument("--data", required=True, help="fashion-mnist, or a CIFAR folder, ImageFolder tree or .npz")
    q.add_argument("--out", required=True, help="output folder (must be empty unless --overwrite)")
    q.add_argument("--subset", type=_positive_int, help="protect a class-balanced subset of this size")
    q.add_argument("--seed", type=_seed, default=0)
    q.add_argument("--resume", action="store_true", help="continue an interrupted run from its checkpoint")
    q.add_argument("--overwrite", action="store_true", help="replace a non-empty output folder")
    q.add_argument("--classes", metavar="LIST", help="protect only these classes (comma list of indices or names, "
                   "e.g. 0 or Bag,Sneaker); the attack still sees every image (docs/partial-poisoning.md)")
    q.add_argument("--ratio", type=_ratio, metavar="R", help="protect a seeded, class-stratified fraction "
                   "0 < R <= 1 of the training set (of the --classes images when given)")
    _add_attack_flags(q)

    ms = sub.add_parser("measure", help="sliced MI between clean and poisoned features, MI gap, covariance, separability")
    ms.add_argument("--poisoned", required=True, nargs="+", metavar="DIR",
                    help="protected dataset folder(s) written by 'poison' (same images, e.g. several attacks)")
    ms.add_argument("--clean", metavar="DATA", help="clean data spec to check against (default: the clean images "
                    "recovered from the folder, poisoned - perturbation)")
    ms.add_argument("--model", default="cnn", help="checkpoint folder (model.json + model.safetensors, e.g. from "
                    "'train --out'; one g for every set), or a registry name to train now on each poisoned set and "
                    "on the clean images (default cnn)")
    _add_mi_model_flag(ms, default=None, extra="; only with --model NAME")
    ms.add_argument("--estimators", default="hist,hist-mm,kde,ksg", help="comma list of hist, hist-mm, kde, ksg, mine")
    ms.add_argument("--slices", type=_positive_int, help="random direction pairs m (default 2000; mine 100)")
    ms.add_argument("--seed", type=_seed, default=0)
    ms.add_argument("--pooled", action="store_true", help="pool all classes instead of the class-conditional average")
    ms.add_argument("--max-per-class", type=_positive_int, help="use at most this many images per class")
    ms.add_argument("--train-epochs", type=_positive_int, default=8, help="epochs when --model is a registry name")
    ms.add_argument("--no-covariance", action="store_true")
    ms.add_argument("--no-separability", action="store_true")
    ms.add_argument("--acc", type=_number, nargs="+", help="victim test accuracy per --poisoned folder (for acc gaps "
                    "and their Spearman correlation with the MI gaps)")
    ms.add_argument("--clean-acc", type=_number, help="victim test accuracy on clean data (with --acc)")
    ms.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (feature extraction, training)")
    ms.add_argument("--out", help="write the full results as JSON here")
    import importlib
    for mod in EXTENSIONS:
        importlib.import_module(mod).register(sub, _common())
    return p


def cmd_demo(args):
    from .experiments.demo import format_table, run_demo
    overrides = _attack_overrides(args)
    r = run_demo(args.out, data=args.data, subset=args.subset, seed=args.seed, method=args.method,
                 preset=args.preset, victim_epochs=args.victim_epochs, attack_overrides=overrides,
                 mi_model=args.mi_model, overwrite=args.overwrite)
    print(format_table(r))
    print(f"results: {Path(args.out) / 'results.json'}")


def cmd_poison(args):
    from .poison import poison_dataset
    m = poison_dataset(args.method, args.data, args.out, subset=args.subset, seed=args.seed, preset=args.preset,
                       overrides=_attack_overrides(args), resume=args.resume, overwrite=args.overwrite,
                       classes=args.classes, ratio=args.ratio)
    sel = m.get("selection")
    extra = {} if sel is None else {
        "protected": sel["count"], "ratio": sel["ratio"],
        "protected_classes": None if sel["protected_classes"] is None
        else [m["class_names"][c] for c in sel["protected_classes"]]}
    print(json.dumps({"out": str(args.out), "method": m["method"], "images": m["counts"]["train"], **extra,
                      "eps_255": m["eps_255"], "linf_255": m["linf_255"],
                      "generate_s": m["timings"]["generate_s"]}))


def cmd_measure(args):
    from .data import spec_path
    from .fsutil import check_output_file, write_json
    from .measure.report import format_table, parse_estimators, run_measure
    names = parse_estimators(args.estimators)
    if args.out:  # before any work: a bad --out must not cost the whole measurement
        check_output_file(args.out, inputs=[*args.poisoned, spec_path(args.clean), args.model])
    res = run_measure(args.poisoned, clean=args.clean, model=args.model, mi_model=args.mi_model,
                      estimators=names, slices=args.slices, seed=args.seed, conditional=not args.pooled,
                      max_per_class=args.max_per_class,
                      covariance=not args.no_covariance, separability=not args.no_separability, device=args.device,
                      train_epochs=args.train_epochs, accs=args.acc, clean_acc=args.clean_acc)
    print(format_table(res))
    if args.out:
        write_json(args.out, res)
        print(f"results: {args.out}")


COMMANDS = {"demo": cmd_demo, "poison": cmd_poison, "measure": cmd_measure}

# Commands that live beside the library code they drive. Each module has
# ``register(sub, common)``: it adds its sub-parser(s) with ``set_defaults(func=...)``;
# ``common`` gives the shared argument types and flag groups of this module.
EXTENSIONS = ("unlearnable.train_cli", "unlearnable.protect.cli", "unlearnable.experiments.run_cli",
              "unlearnable.experiments.compare_cli")


def _common():
    return {"eps": _eps, "positive_int": _positive_int, "seed": _seed, "number": _number,
            "positive_number": _positive_number, "fraction": _fraction, "ratio": _ratio, "add_attack_flags": _add_attack_flags,
            "attack_overrides": _attack_overrides, "add_mi_model_flag": _add_mi_model_flag}


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    from .progress import set_quiet
    if args.quiet:
        set_quiet(True)
    return guarded(lambda: (getattr(args, "func", None) or COMMANDS[args.command])(args))


def guarded(run, where: str = "") -> int:
    """The CLI's one error boundary: run ``run()`` and turn every failure into one line.

    Expected failures, exit 2: :class:`UnlearnableError` (bad input, named by the library)
    and ``OSError`` (permission, not a folder, no space left: the file and the reason).
    Ctrl-C: exit 130. Anything else is a bug: one line saying so with the path of a file
    holding the traceback, exit 1 (a user never sees a raw traceback, and no bug is hidden).
    ``SystemExit`` passes through (a command may choose its exit status).
    """
    try:
        run()
    except UnlearnableError as e:
        return _fail(f"{where}{e}")
    except KeyboardInterrupt:
        sys.stderr.write("unlearnable: interrupted\n")
        return 130
    except OSError as e:
        return _fail(f"{where}{describe_os_error(e)}")
    except MemoryError:
        return _fail(f"{where}out of memory (try a smaller --batch-size or --subset)")
    except Exception:  # noqa: BLE001 - the boundary: everything else is reported as a bug
        path = _save_traceback()
        sys.stderr.write(f"unlearnable: internal error (a bug): {where}{_last_line()}; "
                         f"traceback in {path}\n")
        return 1
    return 0


def _fail(message: str) -> int:
    sys.stderr.write(f"unlearnable: error: {' '.join(str(message).split())}\n")  # one line, whatever it holds
    return 2


def describe_os_error(e: OSError) -> str:
    """``cannot write FILE: No space left on device`` style, naming the file(s)."""
    import errno
    reason = e.strerror or str(e) or type(e).__name__
    files = " -> ".join(str(f) for f in (e.filename, e.filename2) if f is not None)
    if e.errno == errno.ENOSPC:
        return f"no space left on device while writing {files or 'the output'}; free some space and rerun"
    return f"{files}: {reason}" if files else reason


def _last_line() -> str:
    exc = sys.exc_info()[1]
    text = " ".join(f"{type(exc).__name__}: {exc}".split())
    return text if len(text) <= 300 else text[:297] + "..."


def _save_traceback() -> str:
    """Write the current exception's traceback (with the command line and versions) to a
    new file in the temp folder and return its path; never raises."""
    import os
    import platform
    import tempfile
    import time
    import traceback
    try:
        fd, path = tempfile.mkstemp(prefix=f"unlearnable-bug-{time.strftime('%Y%m%d-%H%M%S')}-", suffix=".txt")
        with os.fdopen(fd, "w") as f:
            f.write(f"command: {' '.join(sys.argv)}\npython {platform.python_version()} on {platform.platform()}\n")
            try:
                from importlib.metadata import version
                f.write(f"unlearnable {version('unlearnable')}, torch {version('torch')}\n\n")
            except Exception:  # noqa: BLE001 - versions are a courtesy
                f.write("\n")
            traceback.print_exc(file=f)
        return path
    except Exception:  # noqa: BLE001 - the report of a bug must not itself crash
        return "(could not be written)"


if __name__ == "__main__":
    sys.exit(main())
