"""``unlearnable train`` and ``unlearnable evaluate``: victims under protocols and defenses.

``train`` fits one victim (model x protocol x defenses) on one dataset and writes
``OUT/metrics.json`` plus the model. ``evaluate`` runs a list of such cells on a dataset
(and, with ``--clean``, on the clean images too), prints a Markdown table and writes
``OUT/evaluate.json``; each cell's result is its own file, so a killed run resumes.

Cell syntax: ``MODEL:PROTOCOL[:DEFENSES]``, e.g. ``cnn:st``, ``resnet-18:at-4``,
``cnn:st:jpeg:10``, ``cnn:at-8:cutout,grayscale``. PROTOCOL is ``st``, ``at`` (8/255) or
``at-E`` (E in 1/255 units); DEFENSES is a defense spec list (commas compose) or ``none``.
``--models/--protocols/--defenses`` add their product to the cells.
"""

from __future__ import annotations

import json
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from .errors import UnlearnableError, check_seed
from .models import check_model_name


# -- cells -------------------------------------------------------------------------------

@dataclass(frozen=True)
class Cell:
    model: str
    protocol: str  # registry name
    options: tuple = ()  # sorted (key, value) protocol options
    defenses: str = "none"  # canonical defense spec

    @property
    def label(self) -> str:
        proto = self.protocol
        opts = dict(self.options)
        if "at_eps" in opts:
            proto = f"at-{opts['at_eps'] * 255:g}"
        return f"{self.model}:{proto}:{self.defenses}"

    @property
    def slug(self) -> str:
        return re.sub(r"[^A-Za-z0-9._+=-]+", "_", self.label.replace(":", "__").replace(",", "+"))


def parse_cell(text: str) -> Cell:
    from .defenses.base import canonical_defenses
    from .train.protocols import parse_protocol
    parts = text.strip().split(":", 2)
    if len(parts) < 2 or not parts[0] or not parts[1]:
        raise UnlearnableError(f"bad cell {text!r}: expected MODEL:PROTOCOL[:DEFENSES], e.g. cnn:at-4:jpeg:10")
    protocol, options = parse_protocol(parts[1])
    return Cell(check_model_name(parts[0]), protocol, options,
                canonical_defenses(parts[2] if len(parts) == 3 else None))


def build_cells(cells=None, models=None, protocols=None, defenses=None) -> list[Cell]:
    """Explicit cells, then the product models x protocols x defenses; duplicates dropped."""
    out = [parse_cell(c) for c in (cells or [])]
    if models or protocols or defenses or not out:
        for m in models or ["cnn"]:
            for p in protocols or ["st"]:
                for d in defenses or ["none"]:
                    out.append(parse_cell(f"{m}:{p}:{d}"))
    seen, unique = set(), []
    for c in out:
        if c not in seen:
            seen.add(c)
            unique.append(c)
    return unique


# -- one victim --------------------------------------------------------------------------

def run_victim(train, test, *, model: str, protocol: str, options: dict, defenses: str, preset: str | None,
               seed: int, overrides: dict, desc: str | None = None):
    """Train one victim; returns (TrainResult, preset name used, the config)."""
    from .defenses import parse_defenses
    from .train import get_protocol, victim_preset
    from .train.standard import preset_name
    fn = get_protocol(protocol)
    name = preset_name(protocol, preset)
    cfg = victim_preset(name, model=model, **overrides)
    kwargs = {"desc": desc} if desc else {}
    res = fn(train, test, cfg, seed=seed, defenses=parse_defenses(defenses), options=options, **kwargs)
    return res, name, cfg


def _overrides(args) -> dict:
    keys = ("epochs", "lr", "batch_size", "augment", "device", "init", "finetune", "backbone_lr_scale")
    out = {k: getattr(args, k) for k in keys if getattr(args, k, None) is not None}
    if getattr(args, "bf16", False):
        out["bf16"] = True
    if "init" in out:
        from .models.checkpoint import checkpoint_files
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


def cmd_train(args):
    from .data import load_dataset
    from .data import spec_path
    from .fsutil import make_temp_dir, prepare_output_dir, replace_dir, write_json
    from .models.checkpoint import save_model
    out = prepare_output_dir(args.out, args.overwrite, inputs=[spec_path(args.data), args.init])
    from .defenses.base import canonical_defenses
    from .train.protocols import parse_protocol
    protocol, parsed = parse_protocol(args.protocol)
    options = {**dict(parsed), **_at_options(args, protocol)}
    model = check_model_name(args.model)
    defenses = canonical_defenses(args.defense)
    splits = load_dataset(args.data)
    train = splits.train.stratified_subset(args.subset, args.seed) if args.subset else splits.train
    res, preset, cfg = run_victim(train, splits.test, model=model, protocol=protocol, options=options,
                                  defenses=defenses, preset=args.preset, seed=args.seed, overrides=_overrides(args))
    from .train.per_class import protection_metrics
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
    from .data import load_dataset, read_poisoned, spec_path
    from .fsutil import make_temp_dir, prepare_output_dir, replace_dir, write_json
    from .models.checkpoint import save_model
    from .progress import log
    from .train.pretrain import check_pretrain_protocol, provenance, without_images
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
    prov = provenance(data=splits.name, fingerprint=_fingerprint(train), images=len(train), excluded=excluded,
                      exclude=[str(d) for d in args.exclude or []], subset=args.subset, protocol=protocol,
                      epochs=cfg.epochs, seed=args.seed, test_acc=res.test_acc)
    tmp = make_temp_dir(out)
    try:
        save_model(res.model, tmp, name=model, in_channels=train.channels, num_classes=train.num_classes,
                   image_size=train.image_size[0], extra={"provenance": prov})
        write_json(tmp / "metrics.json", {"data": splits.name, "train_images": len(train), "model": model,
                                          "seed": args.seed, "preset": preset, "provenance": prov, **res.metrics()})
        replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    print(json.dumps({"out": str(out), "protocol": protocol, "train_images": len(train),
                      "excluded_images": excluded, "test_acc": res.test_acc, "seconds": round(res.seconds, 1)}))


# -- many victims ------------------------------------------------------------------------

@dataclass
class Source:
    tag: str  # column name: the attack method, "clean", or the data name
    train: object
    test: object
    fingerprint: str = field(default="")


def _fingerprint(ds) -> str:
    from .attacks.source import fingerprint
    return fingerprint(ds.images, ds.labels)[:16]


def load_sources(data: str, clean: str | None, subset: int | None, seed: int) -> list[Source]:
    """The dataset under test, and the clean reference when asked (``""``: recovered from a
    protected folder, as ``poisoned - perturbation``)."""
    from .data import is_poisoned_dir, load_dataset, read_poisoned
    sources = []
    if is_poisoned_dir(Path(data)):
        p = read_poisoned(data)
        sources.append(Source(str(p.manifest.get("method", "protected")), p.poisoned, p.test))
        if clean == "":
            sources.append(Source("clean", p.clean, p.test))
    else:
        if clean == "":
            raise UnlearnableError(f"--clean without a value needs a protected dataset folder as --data, got {data}; "
                                   f"give the clean data spec: --clean SPEC")
        s = load_dataset(data)
        sources.append(Source(s.name, s.train.stratified_subset(subset, seed) if subset else s.train, s.test))
    if clean:
        s = load_dataset(clean)
        sources.append(Source("clean", s.train.stratified_subset(subset, seed) if subset else s.train, s.test))
    for s in sources:
        if s.test is None:
            raise UnlearnableError(f"{s.tag}: the data has no test split to score victims on")
        s.fingerprint = _fingerprint(s.train)
    return sources


def _read_cell_result(path: Path) -> dict:
    """A cell's cached metrics.json, or a one-line error when it is damaged."""
    try:
        prev = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise UnlearnableError(f"cannot read the cached result {path}: {e}; delete it (or pass --overwrite) "
                               f"to recompute") from None
    if not isinstance(prev, dict) or not isinstance(prev.get("summary"), dict) \
            or not isinstance(prev["summary"].get("test_acc"), (int, float)):
        raise UnlearnableError(f"the cached result {path} is not a cell result (no summary.test_acc); delete it "
                               f"(or pass --overwrite) to recompute")
    return prev


def run_evaluate(out, *, data: str, cells: list[Cell], clean: str | None = None, subset: int | None = None,
                 preset: str | None = None, seed: int = 0, overrides: dict | None = None,
                 overwrite: bool = False) -> dict:
    """Train every cell on every source; skip cells whose result file already exists."""
    from .data import spec_path
    from .fsutil import check_output_folder, is_empty_dir, tool_output_kind, write_json
    from .progress import log
    t0 = time.time()
    out = Path(out)
    check_seed(seed)
    check_output_folder(out, [spec_path(data), spec_path(clean or None), (overrides or {}).get("init")])
    if out.is_dir() and not is_empty_dir(out) and tool_output_kind(out) is None and not (out / "cells").is_dir():
        raise UnlearnableError(f"output folder {out} is not empty and is not an evaluation written by unlearnable; "
                               f"choose another")
    overrides = dict(overrides or {})
    sources = load_sources(data, clean, subset, seed)
    rows = []
    total = len(cells) * len(sources)
    done = 0
    for cell in cells:
        row = {"cell": cell.label, "model": cell.model, "protocol": cell.protocol, "options": dict(cell.options),
               "defenses": cell.defenses, "results": {}}
        for src in sources:
            done += 1
            path = out / "cells" / src.tag / cell.slug / "metrics.json"
            settings = {"cell": cell.label, "data_fingerprint": src.fingerprint, "seed": seed, "preset": preset,
                        "overrides": overrides}
            if path.is_file() and not overwrite:
                prev = _read_cell_result(path)
                if prev.get("settings") != settings:
                    raise UnlearnableError(f"{path}: made with other data or settings; use another --out, "
                                           f"or --overwrite to recompute")
                log(f"[{done}/{total}] {src.tag} {cell.label}: done before, skipped")
                row["results"][src.tag] = prev["summary"]
                continue
            log(f"[{done}/{total}] {src.tag} {cell.label}")
            res, preset_used, _ = run_victim(src.train, src.test, model=cell.model, protocol=cell.protocol,
                                             options=dict(cell.options), defenses=cell.defenses, preset=preset,
                                             seed=seed, overrides=overrides, desc=f"{src.tag} {cell.label}")
            summary = {"test_acc": res.test_acc, **res.best(), "train_acc": res.train_acc,
                       "seconds": round(res.seconds, 2)}
            if "robust_test_acc" in res.extra.get("at", {}):
                summary["robust_test_acc"] = res.extra["at"]["robust_test_acc"]
            write_json(path, {"settings": settings, "summary": summary, "preset": preset_used, **res.metrics()})
            row["results"][src.tag] = summary
        rows.append(row)
    tags = [s.tag for s in sources]
    for row in rows:
        if "clean" in tags and len(tags) > 1:
            row["gap"] = round(row["results"]["clean"]["test_acc"] - row["results"][tags[0]]["test_acc"], 5)
    result = {"data": data, "clean": clean, "sources": {s.tag: {"train_images": len(s.train),
                                                               "test_images": len(s.test)} for s in sources},
              "seed": seed, "preset": preset or "cpu", "overrides": overrides, "rows": rows,
              "seconds": round(time.time() - t0, 2)}
    result["table"] = format_table(result)
    write_json(out / "evaluate.json", result)
    return result


def format_table(result: dict) -> str:
    """Final-epoch accuracy per source, then the data under test's best epoch (what an
    attacker who early-stops on clean labels gets), the gap and the time."""
    tags = list(result["sources"])
    head = ["model", "protocol", "defenses"] + [f"{t} acc" for t in tags] + [f"{tags[0]} best epoch"]
    if "clean" in tags and len(tags) > 1:
        head.append("gap")
    head.append("time")
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for row in result["rows"]:
        proto = row["cell"].split(":")[1]
        cells = [row["model"], proto, row["defenses"]]
        cells += [f"{100 * row['results'][t]['test_acc']:.2f}%" for t in tags]
        first = row["results"][tags[0]]
        cells.append(f"{100 * first['best_test_acc']:.2f}% (ep {first['best_epoch']})" if "best_epoch" in first
                     else "-")
        if "gap" in row:
            cells.append(f"{100 * row['gap']:.2f} pts")
        cells.append(f"{sum(row['results'][t]['seconds'] for t in tags):.0f} s")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def cmd_evaluate(args):
    from .train import victim_preset
    from .train.standard import preset_name
    cells = build_cells(args.cells, args.models, args.protocols, args.defenses)
    for c in cells:  # every cell's recipe must exist before anything trains
        victim_preset(preset_name(c.protocol, args.preset), model=c.model, **_overrides(args))
    res = run_evaluate(args.out, data=args.data, cells=cells, clean=args.clean, subset=args.subset,
                       preset=args.preset, seed=args.seed, overrides=_overrides(args), overwrite=args.overwrite)
    print(res["table"])
    print(f"total {res['seconds']:.0f} s; results: {Path(args.out) / 'evaluate.json'}")


# -- parsers -----------------------------------------------------------------------------

def _victim_flags(p, common):
    from .train import VICTIM_PRESETS
    pos = common["positive_int"]
    p.add_argument("--preset", help=f"victim preset: {', '.join(sorted(VICTIM_PRESETS))}, or a family cpu|paper "
                   "(default cpu: 'cpu' for st, 'cpu-at' for at)")
    p.add_argument("--epochs", type=pos)
    p.add_argument("--lr", type=common["positive_number"])
    p.add_argument("--batch-size", type=pos)
    p.add_argument("--augment", help="none (cpu default), crop-flip (paper), crop, flip")
    p.add_argument("--device", help="cpu, cuda, cuda:N or auto")
    p.add_argument("--bf16", action="store_true", help="bf16 autocast for the model")
    p.add_argument("--seed", type=common["seed"], default=0)
    p.add_argument("--subset", type=pos, help="class-balanced subset of the training images (plain data specs)")
    p.add_argument("--overwrite", action="store_true")


def _prior_flags(p, common):
    from .train.prior import FINETUNE_MODES
    p.add_argument("--init", metavar="CKPT", help="start from this checkpoint's backbone (a folder written by "
                   "pretrain or train, or its model.safetensors); the head is new")
    p.add_argument("--finetune", choices=FINETUNE_MODES, help="with --init: full (default: every weight at --lr), "
                   "low-lr (backbone at --backbone-lr-scale x --lr), linear-probe (backbone frozen)")
    p.add_argument("--backbone-lr-scale", type=common["positive_number"],
                   help="low-lr: the backbone's learning rate as a fraction of --lr (default 0.1)")


def register(sub, common):
    from .train import protocol_names
    t = sub.add_parser("train", help="train a victim (model x protocol x defenses) and report clean test accuracy")
    t.add_argument("--data", required=True, help="a protected dataset folder, or any data spec")
    t.add_argument("--model", default="cnn", help="victim model (registry name, e.g. cnn, resnet-18, lenet-5)")
    t.add_argument("--protocol", default="st", help=f"training protocol: {', '.join(protocol_names())} "
                   "(at-E also accepted)")
    t.add_argument("--at-eps", type=common["eps"], help="AT budget in 1/255 units (default 8)")
    t.add_argument("--at-steps", type=common["positive_int"], help="PGD steps (paper 10, cpu-at 3)")
    t.add_argument("--at-step-size", type=common["eps"], help="PGD step in 1/255 units (default 2.5 eps/steps)")
    t.add_argument("--at-no-random-start", action="store_true", help="start PGD at the clean image")
    t.add_argument("--defense", help="defense specs, comma-composed: jpeg:10, grayscale, ueraser, op, cutout, "
                   "cutmix, mixup, ...")
    _victim_flags(t, common)
    _prior_flags(t, common)
    t.add_argument("--out", required=True, help="output folder: metrics.json, model.safetensors, model.json")
    t.set_defaults(func=cmd_train)

    pt = sub.add_parser("pretrain", help="train a prior (a backbone for --init) on clean images disjoint from "
                        "the protected ones")
    pt.add_argument("--data", required=True, help="clean data spec (e.g. fashion-mnist, an .npz, an image folder)")
    pt.add_argument("--exclude", nargs="+", metavar="PROTECTED_DIR", help="protected dataset folder(s): their "
                    "clean originals are removed from --data's training images (matched by pixels)")
    pt.add_argument("--model", default="cnn", help="backbone model (the victim's model)")
    pt.add_argument("--protocol", default="st", help="st (supervised, default) or simclr (self-supervised)")
    _victim_flags(pt, common)
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
    _victim_flags(e, common)
    _prior_flags(e, common)
    e.add_argument("--out", required=True, help="output folder: evaluate.json and cells/<data>/<cell>/metrics.json "
                   "(existing cell results are reused)")
    e.set_defaults(func=cmd_evaluate)
