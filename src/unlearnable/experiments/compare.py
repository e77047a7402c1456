"""``unlearnable compare``: every attack on one dataset, one victim each, a Table-1-style table.

Data flow as in the demo, once per attack: clean data -> attack (its preset, ``cpu`` by
default) -> protected dataset on disk -> a victim trained from scratch on what was written
-> clean test accuracy (final epoch; the best epoch is reported beside it); plus one
victim on the clean data. Each attack's MI gap is the clean reference
SMI(g_clean(X); g_clean(X)) of the clean victim minus SMI(g(X); g(X')), where g is, by
default, the attack's own victim (the paper's g, measured right after it is trained) or,
with ``mi_model="clean"``, the clean victim; same directions on both sides, one column
per estimator (:mod:`unlearnable.measure.gaps`, docs/measuring-mi.md). Below the table,
the Spearman correlation between accuracy gaps and MI gaps over the attacks, per estimator.

Resumable: the output folder keeps one cell per row (``clean/`` with the clean victim's
weights, ``<method>/poisoned/`` with the protected dataset, ``<method>/metrics.json``). A
rerun with the same settings skips every row whose ``metrics.json`` exists, reuses a
finished protected dataset, and resumes an interrupted attack from its checkpoint. The
settings that make rows comparable (data, subset, seed, presets, victim, MI slices,
estimators and g) are in ``settings.json``; a rerun with other settings is refused rather
than mixing rows.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from ..attacks import attack_names, get_attack
from ..attacks.base import UnusableCheckpoint
from ..data import load_dataset, read_poisoned, spec_path
from ..data.dataset import DataSplits
from ..errors import UnlearnableError, check_seed
from ..fsutil import atomic_path, check_output_folder, is_empty_dir, tool_output_kind, write_json
from ..measure import spearman
from ..measure.gaps import G_DESCRIPTIONS, MIGapMeter, check_mi_model
from ..measure.folders import parse_estimators
from ..models.checkpoint import load_model, save_model
from ..poison import partial_dir, poison_dataset
from ..progress import log
from ..train import best_epoch, train_victim, victim_preset
from ..train.pretrain import save_prior
from ..train.standard import preset_name
from .attackers import needs_prior, parse_attackers, train_attacker, worst_case
from .markdown import final_acc_cell, table_lines

# The paper's column order (Table 1), then the APBench extras and anything registered later.
PAPER_ORDER = ["random", "em", "em-class", "ap", "ap-untargeted", "ntga", "ar", "lsp", "ops", "rem", "sem", "entf",
               "gue", "tue", "mi-ue", "a-mi-ue", "mi-ue-g"]


def default_methods() -> list[str]:
    names = attack_names()
    return [m for m in PAPER_ORDER if m in names] + [m for m in names if m not in PAPER_ORDER]


def parse_methods(text: str | None) -> list[str]:
    """A comma list of registered attack names (None: all of them), duplicates dropped.

    A given list that names nothing (``""``, ``","``) or has an empty item is refused, not
    read as "all": a typo must not start hours of work."""
    if text is None:
        return default_methods()
    names = [t.strip().lower() for t in text.split(",")]
    if not any(names) or not all(names):
        raise UnlearnableError(f"methods: expected a comma list of attack names, got {text!r}")
    for n in names:
        get_attack(n)  # one-line error naming the unknown method
    if "clean" in names:
        raise UnlearnableError("'clean' is always included; list attacks only")
    return list(dict.fromkeys(names))


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise UnlearnableError(f"cannot read {path}: {e}") from None


def _check_settings(out: Path, settings: dict, overwrite: bool) -> None:
    """Start ``out`` (new or ``overwrite``), or check that a rerun uses the same settings."""
    path = out / "settings.json"
    if out.is_dir() and not is_empty_dir(out) and tool_output_kind(out) != "comparison":
        raise UnlearnableError(f"output folder {out} is not empty and is not a comparison written by unlearnable "
                               f"(no settings.json of a comparison); choose another")
    if out.exists() and overwrite:
        shutil.rmtree(out)
    if out.exists() and not is_empty_dir(out):
        old, new = _read_json(path), json.loads(json.dumps(settings))
        diff = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
        if diff:
            raise UnlearnableError(f"{out} holds a comparison made with other settings ({', '.join(diff)}); "
                                   f"use the same settings, another `out`, or `overwrite`")
        return
    write_json(path, settings)


def run_compare(out: str | Path, *, data: str = "fashion-mnist", methods: list[str] | None = None,
                subset: int | None = 5000, seed: int = 0, preset: str = "cpu", victim: str = "cpu",
                victim_epochs: int | None = None, victim_overrides: dict | None = None, mi_slices: int = 500,
                estimators: list[str] | tuple[str, ...] = ("hist", "ksg"), mi_model: str = "victim",
                attackers: list[str] | None = None, prior_images: int = 10000, overwrite: bool = False) -> dict:
    """Run ``methods`` (default: every registered attack) and return the results dict, also
    written to ``out/results.json`` with the table in ``out/table.md``.

    ``victim_overrides`` are :class:`~unlearnable.train.VictimConfig` fields on top of the
    ``victim`` preset (tests use a tiny model). ``estimators``: the sliced-MI estimators
    of every row; ``mi_model``: g, ``victim`` (each attack's own victim, the default) or
    ``clean`` (the clean victim). An attack that fails with an :class:`UnlearnableError`
    is recorded under ``failed`` (and retried by the next run); the others still run.

    ``attackers`` (:mod:`unlearnable.experiments.attackers`; ``[]`` for the default list,
    None for none): every row, clean included, is also attacked by each of them, and
    ``results["worst_case"]`` gives per row the accuracy each reached and the highest (the
    worst case for the protector), named. The prior attackers start from a prior trained
    like the victim on ``prior_images`` clean training images outside the subset.
    """
    t0 = time.time()
    out = Path(out)
    check_mi_model(mi_model)
    estimators = parse_estimators(",".join(estimators))
    check_seed(seed)
    methods = parse_methods(",".join(methods)) if methods is not None else default_methods()
    vcfg = victim_preset(victim, epochs=victim_epochs, **(victim_overrides or {}))

    def victim_config(protocol: str):  # the victim's recipe under a protocol (AT: the preset's AT member)
        return victim_preset(preset_name(protocol, victim), epochs=victim_epochs, **(victim_overrides or {}))

    atts = parse_attackers(attackers) if attackers is not None else None
    for a in atts or []:
        victim_config(a.protocol)  # refuse a recipe that cannot be built before any work
    if prior_images <= 0:
        raise UnlearnableError(f"prior_images must be positive, got {prior_images}")
    for m in methods:
        get_attack(m).from_preset(preset)  # refuse an unknown preset before any work
    check_output_folder(out, [spec_path(data)])
    splits = load_dataset(data)
    subset_idx = splits.train.stratified_indices(subset, seed) if subset else None
    train = splits.train.take(subset_idx) if subset else splits.train
    if splits.test is None:
        raise UnlearnableError(f"{splits.name}: no test split to measure victims on")
    if len(train) == 0:
        raise UnlearnableError(f"{splits.name}: no training images")
    if atts is not None and needs_prior(atts) and len(train) == len(splits.train):
        raise UnlearnableError("the prior attackers (finetune, low-lr, probe) need clean training images outside "
                               "the protected subset to pretrain on; use a smaller `subset` or leave them out")
    settings = {"data": str(data), "subset": len(train), "seed": seed, "preset": preset,
                "victim": asdict(vcfg), "mi_slices": mi_slices, "estimators": estimators, "mi_model": mi_model}
    _check_settings(out, settings, overwrite)
    run_splits = DataSplits(train, splits.test, splits.name)

    clean, clean_model = _clean_cell(out / "clean", run_splits, vcfg, seed)
    meter = None  # the clean reference, computed once, and only when a row needs measuring

    def measure_mi(g, protected) -> dict:
        nonlocal meter
        if meter is None:
            meter = MIGapMeter.for_model(clean_model, train, estimators=estimators, slices=mi_slices, seed=seed)
        return meter.measure(clean_model if mi_model == "clean" else g, protected.poisoned)

    rows, failed = {}, {}
    for i, method in enumerate(methods):
        log(f"[{i + 1}/{len(methods)}] {method}")
        try:
            rows[method] = _attack_cell(out / method, method, run_splits, vcfg, clean, measure_mi, seed=seed,
                                        preset=preset)
        except UnlearnableError as e:
            log(f"{method} failed: {e}")
            failed[method] = str(e)
    worst = None
    if atts is not None:
        prior = None
        if needs_prior(atts):
            prior = _prior_cell(out / f"prior-{prior_images}", splits, subset_idx, prior_images, vcfg, seed)
        sets = [("clean", out / "clean", train, clean)]
        sets += [(m, out / m, read_poisoned(out / m / "poisoned").poisoned, rows[m]) for m in rows]
        worst = {name: _attacker_cells(cell, atts, data_set, splits.test, row, victim_config, seed=seed, prior=prior,
                                       name=name) for name, cell, data_set, row in sets}
    results = {"data": splits.name, "subset": len(train), "test_size": len(splits.test), "seed": seed,
               "preset": preset, "victim": vcfg.model, "victim_epochs": vcfg.epochs, "methods": methods,
               "mi_model": mi_model, "mi_g": G_DESCRIPTIONS[mi_model], "estimators": estimators,
               "mi_slices": mi_slices, "clean": clean, "attacks": rows, "failed": failed,
               "spearman": spearman_by_estimator(rows, estimators), "seconds": round(time.time() - t0, 2)}
    if atts is not None:
        skipped = {a.label: a.skipped(train.channels) for a in atts}
        results.update(attackers=[a.label for a in atts], prior_images=prior_images if needs_prior(atts) else None,
                       skipped={k: why for k, why in skipped.items() if why}, worst_case=worst)
    write_json(out / "results.json", results)
    with atomic_path(out / "table.md") as tmp:
        tmp.write_text(format_table(results) + "\n" + (f"\n{format_worst_case(results)}\n" if atts is not None else ""))
    return results


def spearman_by_estimator(rows: dict, estimators: list[str]) -> dict:
    """Per estimator, Spearman's rho (acc gap vs MI gap) over the attack rows that ran,
    with n and p; rho and p are None with the reason when undefined (n < 3, a constant side)."""
    out = {}
    for est in estimators:
        pairs = [(row["acc_gap"], row["mi"][est]["gap"]) for row in rows.values() if est in row.get("mi", {})]
        if len(pairs) < 3:
            out[est] = {"rho": None, "p_value": None, "n": len(pairs), "undefined": "n < 3"}
        else:
            out[est] = spearman(*zip(*pairs))
    return out


def _with_best_epoch(row: dict) -> dict:
    acc, ep = best_epoch(row["history"])
    return {**row, "best_acc": acc, "best_epoch": ep}


def _failure(res) -> dict:
    """The victim's "did not learn" reason (train.standard.did_not_learn), when it has one."""
    return {"did_not_learn": res.extra["did_not_learn"]} if "did_not_learn" in res.extra else {}


def _pct_final(row: dict) -> str:
    return final_acc_cell(row["test_acc"], row.get("did_not_learn"))


def _clean_cell(cell: Path, splits: DataSplits, vcfg, seed: int):
    """The clean victim (cached: metrics.json + its weights, needed for every MI row)."""
    metrics = cell / "metrics.json"
    if metrics.is_file():
        model, _ = load_model(cell / "model", device="cpu")
        return _read_json(metrics), model
    log(f"victim {vcfg.model} on clean data")
    res = train_victim(splits.train, splits.test, vcfg, seed=seed, desc="victim (clean)")
    tr = splits.train
    save_model(res.model, cell / "model", name=vcfg.model, in_channels=tr.channels, num_classes=tr.num_classes,
               image_size=tr.image_size[0])
    row = _with_best_epoch({"test_acc": res.test_acc, "train_acc": res.train_acc, "victim_s": round(res.seconds, 2),
                            **_failure(res), "history": res.history})
    write_json(metrics, row)
    return row, res.model


def _attack_cell(cell: Path, method: str, splits: DataSplits, vcfg, clean: dict, measure_mi, *, seed: int,
                 preset: str) -> dict:
    """One attack's row; ``measure_mi(victim_model, protected)`` gives its MI per estimator.
    A cached row keeps the MI measured when it ran (settings.json pins estimators and g)."""
    metrics = cell / "metrics.json"
    if metrics.is_file():
        log(f"{method}: cached in {cell}")
        return _read_json(metrics)
    pdir = cell / "poisoned"
    if not (pdir / "manifest.json").is_file():
        # resume=True continues a checkpoint left by an interrupted run (or starts afresh). The
        # folder is a cache: a checkpoint it cannot use (another version's, a damaged file) is
        # replaced by a new run of this row, said in the log, rather than failing the row for good.
        try:
            poison_dataset(method, splits, pdir, seed=seed, preset=preset, resume=True, overwrite=True)
        except UnusableCheckpoint as e:
            log(f"{method}: the checkpoint in {partial_dir(pdir)} is unusable ({e.why}); starting this attack again")
            poison_dataset(method, splits, pdir, seed=seed, preset=preset, resume=False, overwrite=True)
    protected = read_poisoned(pdir)  # what a data user would scrape: the files on disk
    if not np.array_equal(protected.clean.images, splits.train.images):
        # the clean reference is measured on the subset in memory; X must be the same images
        raise UnlearnableError(f"{pdir} does not hold this comparison's training images in order; "
                               f"remove it (or pass `overwrite`)")
    manifest = protected.manifest
    res = train_victim(protected.poisoned, splits.test, vcfg, seed=seed, desc=f"victim ({method})")
    mi = measure_mi(res.model, protected)
    row = _with_best_epoch({
        "method": method, "test_acc": res.test_acc, "acc_gap": round(clean["test_acc"] - res.test_acc, 5),
        "train_acc": res.train_acc, "mi": mi, "generate_s": manifest["timings"]["generate_s"],
        "victim_s": round(res.seconds, 2), "eps_255": manifest["eps_255"], "linf_255": manifest["linf_255"],
        "norm": manifest.get("norm", "linf"), "l0_pixels": manifest.get("l0_pixels"), **_failure(res),
        "history": res.history})
    write_json(metrics, row)
    return row


def _prior_cell(cell: Path, splits: DataSplits, subset_idx, n: int, vcfg, seed: int) -> Path:
    """The prior of the prior attackers (cached): the victim's model trained as the victim on
    ``n`` clean training images outside the protected subset; returns its checkpoint folder."""
    model_dir = cell / "model"
    if (model_dir / "model.json").is_file():
        return model_dir
    rest = np.setdiff1d(np.arange(len(splits.train)), subset_idx)  # not empty: run_compare checked
    data = splits.train.take(rest).stratified_subset(n, seed)
    log(f"prior: {vcfg.model} on {len(data)} clean training images outside the subset")
    res = train_victim(data, splits.test, vcfg, seed=seed, desc="prior")
    save_prior(res.model, model_dir, data, data_name=splits.name, model_name=vcfg.model, protocol="st",
               epochs=vcfg.epochs, seed=seed, test_acc=res.test_acc, subset=n)
    return model_dir


def _attacker_cells(cell: Path, attackers, train, test, row: dict, victim_config, *, seed: int, prior, name: str):
    """One row's accuracy under every attacker (each victim cached in ``cell/attackers/``),
    and the worst case over them. ``none`` is the row's own scratch victim."""
    by = {}
    for a in attackers:
        if a.label == "none":
            by[a.label] = row["test_acc"]
            continue
        if a.skipped(train.channels):
            by[a.label] = None
            continue
        # a prior attacker's victim depends on the prior too (its folder name says its size)
        slug = a.slug if a.finetune is None else f"{a.slug}-{Path(prior).parent.name}"
        path = cell / "attackers" / slug / "metrics.json"
        if path.is_file():
            by[a.label] = _read_json(path)["test_acc"]
            continue
        log(f"{name}: attacker {a.label}")
        res = train_attacker(a, train, test, victim_config, seed=seed, prior=prior, desc=f"victim ({name})")
        keep = {k: res.extra[k] for k in ("early_stopping", "prior", "did_not_learn") if k in res.extra}
        if "robust_test_acc" in res.extra.get("at", {}):
            keep["robust_test_acc"] = res.extra["at"]["robust_test_acc"]
        if a.augment is not None:
            keep["augment"] = {k: res.config[k] for k in ("augment", "crop_padding")}
        write_json(path, {"attacker": a.label, "test_acc": res.test_acc, **res.best(), "train_acc": res.train_acc,
                          "victim_s": round(res.seconds, 2), **keep, "history": res.history})
        by[a.label] = res.test_acc
    return {"by_attacker": by, **worst_case(by)}


def format_worst_case(r: dict) -> str:
    """Markdown: one row per training set, the accuracy each attacker reaches, and the worst
    case for the protector (the highest, named)."""
    labels = r["attackers"]
    head = ("training data", *labels, "worst case (attacker)")
    rows = []
    for name in ["clean", *[m for m in r["methods"] if m in r["worst_case"]]]:
        w = r["worst_case"][name]
        accs = ["n/a" if w["by_attacker"].get(a) is None else f"{100 * w['by_attacker'][a]:.2f}%" for a in labels]
        top = "-" if w["test_acc"] is None else f"{100 * w['test_acc']:.2f}% ({w['attacker']})"
        rows.append((name, *accs, top))
    notes = [f"{a}: n/a ({why})" for a, why in (r.get("skipped") or {}).items()]
    title = ("Worst case for the protector: final-epoch clean test accuracy under each attacker (st-es: the "
             "early-stopped epoch, on the test images outside its validation split"
             + (f"; finetune/low-lr/probe: from a prior trained on {r['prior_images']} clean images outside "
                f"the subset" if r.get("prior_images") else "") + ")")
    return "\n".join([title, "", *table_lines(head, rows), *notes])


def _pct_best(row: dict) -> str:
    acc, ep = (row["best_acc"], row["best_epoch"]) if "best_acc" in row else best_epoch(row["history"])
    return f"{100 * acc:.2f}% (ep {ep})"


def format_table(r: dict) -> str:
    """Markdown: attack | test acc (final) | best epoch | gap vs clean | one MI column per
    estimator (SMI, and the gap +- its SE) | generation s | victim s; then the failures and
    one Spearman line per estimator."""
    ests = r.get("estimators", ["hist"])
    head = ("attack", "test acc (final)", "best epoch", "gap vs clean", *[f"MI {e} (gap +- SE)" for e in ests],
            "generation s", "victim s")
    c = r["clean"]
    ref = {e: next((row["mi"][e]["clean"] for row in r["attacks"].values() if e in row["mi"]), None) for e in ests}
    rows = [("clean", _pct_final(c), _pct_best(c), "-",
             *["-" if ref[e] is None else f"{ref[e]:.4f} (reference)" for e in ests], "-", f"{c['victim_s']:.0f}")]
    for m in r["methods"]:
        if m in r["failed"]:
            rows.append((m, "failed", *["-"] * (len(head) - 2)))
            continue
        a = r["attacks"][m]
        name = m + (f" (L0 {a['l0_pixels']} px)" if a.get("norm") == "l0" else "")
        mi = [f"{a['mi'][e]['poisoned']:.4f} ({a['mi'][e]['gap']:.4f} +- {a['mi'][e]['se']:.4f})" for e in ests]
        rows.append((name, _pct_final(a), _pct_best(a), f"{100 * a['acc_gap']:.2f} pts", *mi,
                     f"{a['generate_s']:.0f}", f"{a['victim_s']:.0f}"))
    g = r.get("mi_g", G_DESCRIPTIONS["clean"])  # results written before mi_model existed used the clean victim
    title = (f"{r['data']}: {r['subset']} training images, preset {r['preset']}, victim {r['victim']} "
             f"({r['victim_epochs']} epochs), accuracy on the {r['test_size']}-image clean test set (final epoch; "
             f"best epoch beside it); class-conditional sliced MI of g(X) vs g(X') in nats "
             f"(m={r.get('mi_slices', '?')}), g: {g}")
    lines = [title, "", *table_lines(head, rows)]
    lines += [f"{m} failed: {msg}" for m, msg in r["failed"].items()]
    for e, s in (r.get("spearman") or {}).items():
        if s["rho"] is None:
            lines.append(f"Spearman (acc gap vs MI gap, {e}): n/a ({s['undefined']}), n {s['n']}")
        else:
            lines.append(f"Spearman (acc gap vs MI gap, {e}): rho {s['rho']:.2f}, p {s['p_value']:.2g}, n {s['n']}")
    return "\n".join(lines)
