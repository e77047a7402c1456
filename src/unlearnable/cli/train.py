"""``unlearnable train``, ``pretrain`` and ``evaluate``: victims under protocols and defenses.

``train`` fits one victim (model x protocol x defenses) on one dataset and writes
``OUT/metrics.json`` plus the model. ``pretrain`` fits a prior (a backbone for ``--init``).
``evaluate`` runs a list of such cells on a dataset (and, with ``--clean``, on the clean
images too), prints a Markdown table and writes ``OUT/evaluate.json``; each cell's result is
its own file, so a killed run resumes (:mod:`unlearnable.experiments.evaluate`).

Cell syntax: ``MODEL:PROTOCOL[:DEFENSES]``, e.g. ``cnn:st``, ``resnet-18:at-4``,
``cnn:st:jpeg:10``, ``cnn:at-8:cutout,grayscale``. PROTOCOL is ``st``, ``at`` (8/255) or
``at-E`` (E in 1/255 units); DEFENSES is a defense spec list (commas compose) or ``none``.
``--models/--protocols/--defenses`` add their product to the cells.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from ..errors import UnlearnableError, check_seed
from ..experiments.evaluate import build_cells, run_evaluate, run_victim
from ..models import check_model_name
from .common import add_prior_flags, add_victim_flags, eps_255, positive_int


def _overrides(args) -> dict:
    keys = ("epochs", "lr", "batch_size", "augment", "device", "init", "finetune", "backbone_lr_scale")
    out = {k: getattr(args, k) for k in keys if getattr(args, k, None) is not None}
    if getattr(args, "bf16", False):
        out["bf16"] = True
    if "init" in out:
        from ..models.checkpoint import checkpoint_files
        out["init"] = str(Path(out["init"]))
        try:
            checkpoint_files(out["init"])  # before any work: a missing prior is named now
        except UnlearnableError as e:
            raise UnlearnableError(f"--init: {e}") from None
    elif "finetune" in out or "backbone_lr_scale" in out:
        raise UnlearnableError("--finetune and --backbone-lr-scale need --init CKPT (a checkpoint to start from)")
    return out


def _at_options(args, protocol: str) -> dict:
    given = {k: getattr(args, k) for k in ("at_eps", "at_steps", "at_step_size") if getattr(args, k) is not None}
    if args.at_no_random_start:
        given["at_random_start"] = False
    if given and protocol != "at":
        flags = ", ".join("--" + k.replace("_", "-") for k in given)
        raise UnlearnableError(f"{flags} only apply to --protocol at")
    return given


# -- one victim --------------------------------------------------------------------------

def cmd_train(args):
    from ..data import load_dataset
    from ..data import spec_path
    from ..fsutil import make_temp_dir, prepare_output_dir, replace_dir, write_json
    from ..models.checkpoint import save_model
    out = prepare_output_dir(args.out, args.overwrite, inputs=[spec_path(args.data), args.init])
    from ..defenses.base import canonical_defenses
    from ..train.protocols import parse_protocol
    protocol, parsed = parse_protocol(args.protocol)
    options = {**dict(parsed), **_at_options(args, protocol)}
    model = check_model_name(args.model)
    defenses = canonical_defenses(args.defense)
    splits = load_dataset(args.data)
    train = splits.train.stratified_subset(args.subset, args.seed) if args.subset else splits.train
    res, preset, cfg = run_victim(train, splits.test, model=model, protocol=protocol, options=options,
                                  defenses=defenses, preset=args.preset, seed=args.seed, overrides=_overrides(args))
    from ..train.per_class import protection_metrics
    per_class = protection_metrics(res.model, splits.test, args.data, bf16=cfg.bf16, channels_last=cfg.channels_last)
    tmp = make_temp_dir(out)
    try:
        save_model(res.model, tmp, name=cfg.model, in_channels=train.channels, num_classes=train.num_classes,
                   image_size=train.image_size[0])
        write_json(tmp / "metrics.json", {"data": splits.name, "train_images": len(train), "model": cfg.model,
                                          "seed": args.seed, "preset": preset, "protocol_options": options,
                                          **res.metrics(), **per_class})
        replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    summary = {"out": str(out), "protocol": res.protocol, "defenses": res.defenses, "test_acc": res.test_acc,
               **res.best(), "train_acc": res.train_acc, "seconds": round(res.seconds, 1)}
    if "early_stopping" in res.extra:
        summary["stopped_at_epoch"] = res.extra["early_stopping"]["epoch"]
    if "at" in res.extra and "robust_test_acc" in res.extra["at"]:
        summary["robust_test_acc"] = res.extra["at"]["robust_test_acc"]
    summary.update(per_class)
    print(json.dumps(summary))


# -- a prior -----------------------------------------------------------------------------

def cmd_pretrain(args):
    from ..data import load_dataset, read_poisoned, spec_path
    from ..fsutil import make_temp_dir, prepare_output_dir, replace_dir, write_json
    from ..progress import log
    from ..train.pretrain import check_pretrain_protocol, save_prior, without_images
    out = prepare_output_dir(args.out, args.overwrite, inputs=[spec_path(args.data), *(args.exclude or [])])
    protocol = check_pretrain_protocol(args.protocol)
    model = check_model_name(args.model)
    check_seed(args.seed)
    splits = load_dataset(args.data)
    train, excluded = splits.train, 0
    if args.exclude:
        train, excluded = without_images(train, [read_poisoned(d).clean.images for d in args.exclude])
        log(f"pretrain: {excluded} of the data's {len(splits.train)} training images are protected ones "
            f"(excluded); {len(train)} remain")
    if args.subset:
        train = train.stratified_subset(args.subset, args.seed)
    res, preset, cfg = run_victim(train, splits.test, model=model, protocol=protocol, options={}, defenses="none",
                                  preset=args.preset, seed=args.seed, overrides=_overrides(args),
                                  desc=f"pretrain ({protocol})")
    tmp = make_temp_dir(out)
    try:
        prov = save_prior(res.model, tmp, train, data_name=splits.name, model_name=model, protocol=protocol,
                          epochs=cfg.epochs, seed=args.seed, test_acc=res.test_acc, excluded=excluded,
                          exclude=args.exclude or [], subset=args.subset)
        write_json(tmp / "metrics.json", {"data": splits.name, "train_images": len(train), "model": model,
                                          "seed": args.seed, "preset": preset, "provenance": prov, **res.metrics()})
        replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    print(json.dumps({"out": str(out), "protocol": protocol, "train_images": len(train),
                      "excluded_images": excluded, "test_acc": res.test_acc, "seconds": round(res.seconds, 1)}))


# -- many victims ------------------------------------------------------------------------

def cmd_evaluate(args):
    from ..train import victim_preset
    from ..train.standard import preset_name
    cells = build_cells(args.cells, args.models, args.protocols, args.defenses)
    for c in cells:  # every cell's recipe must exist before anything trains
        victim_preset(preset_name(c.protocol, args.preset), model=c.model, **_overrides(args))
    res = run_evaluate(args.out, data=args.data, cells=cells, clean=args.clean, subset=args.subset,
                       preset=args.preset, seed=args.seed, overrides=_overrides(args), overwrite=args.overwrite)
    print(res["table"])
    print(f"total {res['seconds']:.0f} s; results: {Path(args.out) / 'evaluate.json'}")


# -- parsers -----------------------------------------------------------------------------

def register(sub) -> None:
    from ..train import protocol_names
    t = sub.add_parser("train", help="train a victim (model x protocol x defenses) and report clean test accuracy")
    t.add_argument("--data", required=True, help="a protected dataset folder, or any data spec")
    t.add_argument("--model", default="cnn", help="victim model (registry name, e.g. cnn, resnet-18, lenet-5)")
    t.add_argument("--protocol", default="st", help=f"training protocol: {', '.join(protocol_names())} "
                   "(at-E also accepted)")
    t.add_argument("--at-eps", type=eps_255, help="AT budget in 1/255 units (default 8)")
    t.add_argument("--at-steps", type=positive_int, help="PGD steps (paper 10, cpu-at 3)")
    t.add_argument("--at-step-size", type=eps_255, help="PGD step in 1/255 units (default 2.5 eps/steps)")
    t.add_argument("--at-no-random-start", action="store_true", help="start PGD at the clean image")
    t.add_argument("--defense", help="defense specs, comma-composed: jpeg:10, grayscale, ueraser, op, cutout, "
                   "cutmix, mixup, ...")
    add_victim_flags(t)
    add_prior_flags(t)
    t.add_argument("--out", required=True, help="output folder: metrics.json, model.safetensors, model.json")
    t.set_defaults(func=cmd_train)

    pt = sub.add_parser("pretrain", help="train a prior (a backbone for --init) on clean images disjoint from "
                        "the protected ones")
    pt.add_argument("--data", required=True, help="clean data spec (e.g. fashion-mnist, an .npz, an image folder)")
    pt.add_argument("--exclude", nargs="+", metavar="PROTECTED_DIR", help="protected dataset folder(s): their "
                    "clean originals are removed from --data's training images (matched by pixels)")
    pt.add_argument("--model", default="cnn", help="backbone model (the victim's model)")
    pt.add_argument("--protocol", default="st", help="st (supervised, default) or simclr (self-supervised)")
    add_victim_flags(pt)
    pt.add_argument("--out", required=True, metavar="CKPT", help="output folder: model.safetensors, model.json "
                    "(with the prior's provenance), metrics.json")
    pt.set_defaults(func=cmd_pretrain)

    e = sub.add_parser("evaluate", help="victims for a list of (model, protocol, defense) cells; a Markdown table")
    e.add_argument("--data", required=True, help="a protected dataset folder, or any data spec")
    e.add_argument("--clean", nargs="?", const="", metavar="SPEC",
                   help="also train on clean data: the images recovered from the protected folder (no value), "
                   "or a data spec")
    e.add_argument("--cells", nargs="+", metavar="CELL", help="MODEL:PROTOCOL[:DEFENSES], e.g. cnn:st "
                   "cnn:at-4 cnn:st:jpeg:10 cnn:st:cutout,grayscale")
    e.add_argument("--models", nargs="+", metavar="MODEL", help="product with --protocols and --defenses")
    e.add_argument("--protocols", nargs="+", metavar="P", help="st, at (8/255), at-E (E in 1/255)")
    e.add_argument("--defenses", nargs="+", metavar="SPEC", help="none, cutout, jpeg:10, 'jpeg:10,grayscale', ...")
    add_victim_flags(e)
    add_prior_flags(e)
    e.add_argument("--out", required=True, help="output folder: evaluate.json and cells/<data>/<cell>/metrics.json "
                   "(existing cell results are reused)")
    e.set_defaults(func=cmd_evaluate)
