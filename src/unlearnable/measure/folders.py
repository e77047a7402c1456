"""Measure protected folders against their clean images (the library of ``unlearnable
measure``; not to be confused with :mod:`unlearnable.experiments.report`, which writes a
run's tables): features of a model on clean and poisoned images, then sliced MI (clean
reference and clean vs poisoned), MI gaps, covariance and linear separability.

Which network g (:mod:`.gaps`):

* ``--model NAME`` (a registry name), default ``--mi-model victim``: the paper's g. NAME
  is trained here on each poisoned set (g_p, one per distinct folder) and on the clean
  images (g_clean). The reference is SMI(g_clean(X); g_clean(X)) and each set gives
  SMI(g_p(X); g_p(X')).
* ``--model NAME --mi-model clean``: NAME trained on the clean images only, g_clean on
  both sides for every set (what this command measured before; not the paper's g).
* ``--model CKPT`` (a checkpoint folder): one g for everything, labelled ``checkpoint``;
  ``--mi-model`` does not apply.

The reference uses independent directions, as the paper's "Clean" column; each set uses
the same directions on the same samples, so gaps can also be taken slice by slice.
Covariance compares g(X) with g(X') under the set's own g (the pair its MI is measured
on: one network, one feature space, so the two covariances are comparable).
Separability is measured on pixels and does not depend on g.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from ..errors import UnlearnableError
from ..progress import bar, log
from .covariance import compare_covariance
from .estimators import ESTIMATORS
from .features import extract_features, paired_features
from .gaps import G_DESCRIPTIONS, MIGapMeter, check_mi_model
from .relations import mi_gap, relate
from .separability import separability_report

#: estimator -> default number of slices when --slices is not given (MINE trains a network per slice)
DEFAULT_SLICES = {"hist": 2000, "hist-mm": 2000, "kde": 2000, "ksg": 2000, "mine": 100}


def parse_estimators(text: str) -> list[str]:
    names = [t.strip().lower() for t in text.split(",") if t.strip()]
    if not names:
        raise UnlearnableError("no estimator given (use e.g. `estimators` hist,ksg)")
    bad = [t for t in names if t not in ESTIMATORS]
    if bad:
        raise UnlearnableError(f"unknown estimator(s) {', '.join(bad)}; choose from {', '.join(ESTIMATORS)}")
    return list(dict.fromkeys(names))


def _load_clean(spec, pd):
    """The clean rows matching a poisoned folder, from ``spec``; checked against the folder."""
    from ..data import load_dataset
    splits = load_dataset(spec)
    src = splits.train
    idx = pd.clean.indices
    if len(src) == len(pd.clean) and np.array_equal(src.labels, pd.clean.labels):
        clean = src
    elif idx is not None and len(idx) and int(idx.max()) < len(src):
        clean = src.take(idx)
    else:
        raise UnlearnableError(f"`clean` {spec}: cannot align its {len(src)} images with the {len(pd.clean)} of {pd.path}")
    if clean.images.shape != pd.clean.images.shape or not np.array_equal(clean.labels, pd.clean.labels):
        raise UnlearnableError(f"`clean` {spec} does not match {pd.path} (shapes or labels differ row by row)")
    if not np.array_equal(clean.images, pd.clean.images):
        raise UnlearnableError(f"`clean` {spec} differs from the clean images recovered from {pd.path} "
                               f"(poisoned - perturbation): the pairs would not be aligned")
    return clean


def _checkpoint_or_name(model_arg: str, device):
    """The loaded model and its info for a checkpoint folder; None for a registry name."""
    from ..models.checkpoint import load_model
    from ..models.registry import is_model_name
    p = Path(model_arg)
    if p.exists():
        model, meta = load_model(p, device=device)
        return model, {"checkpoint": str(p), **meta}
    if not is_model_name(model_arg):
        raise UnlearnableError(f"`model` {model_arg!r} is neither a checkpoint folder (model.json + "
                               f"model.safetensors) nor a registry model name")
    return None


def _train_here(name: str, train, test, what: str, *, device: str, train_epochs: int, seed: int):
    """Registry model ``name`` trained now on ``train`` (``what`` names it in logs and JSON)."""
    from ..train import train_victim, victim_preset
    if test is None:
        raise UnlearnableError(f"{what} has no test split: cannot train `model` {name} here; pass a checkpoint")
    cfg = victim_preset("cpu", model=name, epochs=train_epochs, device=device)
    log(f"training {name} on {what} ({len(train)} images) for {train_epochs} epochs")
    res = train_victim(train, test, cfg, seed=seed, desc=f"train {name} ({what})")
    return res.model, {"trained_here": True, "trained_on": what, "model": cfg.model, "epochs": cfg.epochs,
                       "test_acc": res.test_acc, "train_acc": res.train_acc, "seed": seed}


def _models(model_arg: str, mi_model: str | None, sets, *, device: str, train_epochs: int, seed: int):
    """(g kind, (reference model, info), [(model, info) per set]) as the module docstring says."""
    from ..runtime import resolve_device
    loaded = _checkpoint_or_name(model_arg, resolve_device(device))
    if loaded is not None:
        if mi_model is not None:
            raise UnlearnableError(f"`mi_model` applies to `model` NAME (trained here); the checkpoint {model_arg} "
                                   f"is one g for every set")
        return "checkpoint", loaded, [loaded] * len(sets)
    kind = check_mi_model(mi_model or "victim")
    base = sets[0]
    kw = dict(device=device, train_epochs=train_epochs, seed=seed)
    ref = _train_here(model_arg, base.clean, base.test, "the clean images", **kw)
    if kind == "clean":
        return kind, ref, [ref] * len(sets)
    per_folder = {}  # a folder given twice is the same training set: one victim
    for pd in sets:
        key = str(Path(pd.path).resolve())
        if key not in per_folder:
            per_folder[key] = _train_here(model_arg, pd.poisoned, pd.test, str(pd.path), **kw)
    return kind, ref, [per_folder[str(Path(pd.path).resolve())] for pd in sets]


def run_measure(poisoned: list[str], *, clean: str | None = None, model: str = "cnn", mi_model: str | None = None,
                estimators: list[str] = ("hist", "ksg"), slices: int | None = None, seed: int = 0,
                conditional: bool = True, max_per_class: int | None = None, covariance: bool = True,
                separability: bool = True, device: str = "auto", train_epochs: int = 8,
                accs: list[float] | None = None, clean_acc: float | None = None) -> dict:
    """Measure ``poisoned`` folders (same clean images); ``model`` and ``mi_model`` choose g
    (module docstring; ``mi_model`` None means ``victim`` for a registry name)."""
    from ..data import read_poisoned
    t0 = time.time()
    sets = [read_poisoned(p) for p in poisoned]
    base = sets[0]
    for pd in sets[1:]:
        if (pd.clean.images.shape != base.clean.images.shape or not np.array_equal(pd.clean.labels, base.clean.labels)
                or not np.array_equal(pd.clean.images, base.clean.images)):
            raise UnlearnableError(f"{pd.path} and {base.path} protect different images: measure them separately")
    clean_ds = _load_clean(clean, base) if clean else base.clean
    labels = clean_ds.labels
    rows = np.arange(len(labels))
    if max_per_class:
        rng = np.random.default_rng(seed)
        rows = np.sort(np.concatenate([rng.permutation(np.flatnonzero(labels == c))[:max_per_class]
                                       for c in np.unique(labels)]))
    kind, (ref_net, ref_info), set_models = _models(model, mi_model, sets, device=device,
                                                    train_epochs=train_epochs, seed=seed)
    t_feat = time.time()
    x_rows = clean_ds.take(rows)
    z_ref = extract_features(ref_net, x_rows)
    pairs = []  # (g(X), g(X')) per set, under the set's g
    for pd, (net, _) in zip(sets, set_models):
        if net is ref_net:
            pairs.append((z_ref, extract_features(net, pd.poisoned.take(rows))))
        else:
            pairs.append(paired_features(net, x_rows, pd.poisoned.take(rows)))
    lab = labels[rows]
    feat_s = time.time() - t_feat
    out = {"clean": clean or f"{base.path} (poisoned - perturbation)", "g": kind, "g_description": G_DESCRIPTIONS[kind],
           "model": ref_info,
           "features": {"dim": int(z_ref.shape[1]), "n": int(len(rows)),
                        "n_per_class": {str(int(c)): int((lab == c).sum()) for c in np.unique(lab)},
                        "seconds": round(feat_s, 2)},
           "settings": {"conditional": conditional, "seed": seed, "slices": {}},
           "reference": {}, "results": []}
    for pd, (_, info) in zip(sets, set_models):
        out["results"].append({"poisoned": str(pd.path), "method": pd.manifest.get("method"),
                               "eps_255": pd.manifest.get("eps_255"), "model": info, "mi": {}, "mi_gap": {}})
    m_of = {name: slices or DEFAULT_SLICES[name] for name in estimators}
    meter = MIGapMeter(z_ref, lab, estimators=estimators, slices=m_of, seed=seed, conditional=conditional)
    with bar(total=len(estimators) * (1 + len(sets)), desc="sliced MI", unit="set") as pb:
        for name in estimators:
            out["settings"]["slices"][name] = m_of[name]
            pb.set_postfix(estimator=name, m=m_of[name])
            t = time.time()
            ref = meter.reference(name)
            out["reference"][name] = {**ref.to_dict(), "seconds": round(time.time() - t, 2)}
            pb.update()
            first = None
            for r, (zc, zp) in zip(out["results"], pairs):
                t = time.time()
                res = meter.against(name, zc, zp)
                r["mi"][name] = {**res.to_dict(), "seconds": round(time.time() - t, 2)}
                r["mi_gap"][name] = mi_gap(ref, res)
                if first is None:
                    first = (r["poisoned"], res)
                else:  # gap difference to the first folder, slice by slice (same directions, whatever each g)
                    d = first[1].slices - res.slices
                    r["mi_gap"][name]["vs_first"] = {"folder": first[0], "diff": float(d.mean()),
                                                     "se_paired": float(d.std(ddof=1) / np.sqrt(len(d)))}
                pb.update()
    for r, (zc, zp), pd in zip(out["results"], pairs, sets):
        if covariance:
            r["covariance"] = compare_covariance(zc, zp, lab)
            for side in ("clean", "poisoned"):
                r["covariance"][side].pop("per_class", None)
        if separability:
            r["separability"] = separability_report(clean_ds.images[rows], pd.poisoned.images[rows], lab)
    if accs is not None:
        if clean_acc is None or len(accs) != len(sets):
            raise UnlearnableError("`accs` needs one accuracy per `poisoned` folder and `clean_acc`")
        for r, a in zip(out["results"], accs):
            r["acc"] = a
            r["acc_gap"] = clean_acc - a
        names = [r["poisoned"] for r in out["results"]]
        out["relations"] = {name: relate(clean_acc, dict(zip(names, accs)),
                                         {r["poisoned"]: r["mi_gap"][name]["gap"] for r in out["results"]})
                            for name in estimators}
    out["seconds"] = round(time.time() - t0, 1)
    return out


def format_table(res: dict) -> str:
    """A small plain-text table of the measurement."""
    lines = []
    f = res["features"]
    npc = sorted(set(f["n_per_class"].values()))
    npc_s = str(npc[0]) if len(npc) == 1 else f"{npc[0]}-{npc[-1]}"
    mode = "class-conditional" if res["settings"]["conditional"] else "pooled"
    g_line = f"g: {res.get('g_description', G_DESCRIPTIONS['checkpoint'])}"
    ref_model = res.get("model") or {}
    if ref_model.get("trained_here"):
        g_line += (f" ({ref_model['model']}, {ref_model['epochs']} epochs, trained here; clean victim test acc "
                   f"{ref_model['test_acc']:.4f})")
    lines.append(g_line)
    lines.append(f"features: d={f['dim']}, n={f['n']} ({npc_s} per class), {mode} sliced MI in nats, "
                 f"SE over slices")
    hdr = f"{'estimator':<9} {'m':>5} {'data':<22} {'SMI':>9} {'SE':>8} {'MI gap':>9} {'SE':>8} {'paired SE':>9}"
    lines.append(hdr)
    lines.append("-" * len(hdr))
    for name, ref in res["reference"].items():
        lines.append(f"{name:<9} {ref['m']:>5} {'clean (reference)':<22} {ref['mean']:>9.4f} {ref['se']:>8.4f}")
        for r in res["results"]:
            mi, g = r["mi"][name], r["mi_gap"][name]
            label = (r.get("method") or "?") + " " + Path(r["poisoned"]).name
            lines.append(f"{'':<9} {'':>5} {label[:22]:<22} {mi['mean']:>9.4f} {mi['se']:>8.4f} {g['gap']:>9.4f} "
                         f"{g['se']:>8.4f} {g.get('se_paired', float('nan')):>9.4f}")
    for name in res["reference"]:
        for r in res["results"][1:]:
            vf = r["mi_gap"][name].get("vs_first")
            if vf:
                lines.append(f"{name}: gap({Path(r['poisoned']).name}) - gap({Path(vf['folder']).name}) = "
                             f"{vf['diff']:.4f} (paired SE {vf['se_paired']:.4f})")
    params = "; ".join(f"{k}: " + ", ".join(f"{a}={b}" for a, b in v["params"].items())
                       for k, v in res["reference"].items())
    lines.append(f"params: {params}")
    for r in res["results"]:
        label = (r.get("method") or "?") + " " + Path(r["poisoned"]).name
        bits = []
        if "covariance" in r:
            c = r["covariance"]
            bits.append(f"logdet/d clean {c['clean']['logdet_per_dim']:.3f} -> poisoned "
                        f"{c['poisoned']['logdet_per_dim']:.3f}, trace x{c['trace_ratio']:.3f}")
        if "separability" in r:
            s = r["separability"]
            bits.append(f"linear train acc: noise {s['noise_train_acc']:.3f}, poisoned {s['poisoned_train_acc']:.3f}, "
                        f"clean {s.get('clean_train_acc', float('nan')):.3f}")
        if res.get("g") == "victim":  # each set's own g: its clean test accuracy is the attack's effect
            bits.append(f"own victim (g) test acc {r['model']['test_acc']:.4f}")
        if "acc_gap" in r:
            bits.append(f"acc gap {r['acc_gap']:.4f}")
        if bits:
            lines.append(f"{label}: " + "; ".join(bits))
    for name, rel in (res.get("relations") or {}).items():
        if "spearman" in rel:
            rho = rel["spearman"]["rho"]
            shown = f"{rho:.3f}" if rho is not None else f"n/a, {rel['spearman']['undefined']}"
            lines.append(f"spearman(acc gap, MI gap) [{name}]: {shown}")
    return "\n".join(lines)
