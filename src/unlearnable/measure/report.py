"""``unlearnable measure``: features of a model on clean and poisoned images, then sliced
MI (clean reference and clean vs poisoned), MI gaps, covariance and linear separability.

The reference for the MI gap is the clean features against themselves, SMI(g(X); g(X))
with independent directions, as the paper's "Clean" column; each poisoned set gives
SMI(g(X); g(X')) on the same samples with the same directions.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from ..errors import UnlearnableError
from ..progress import bar, log
from .covariance import compare_covariance
from .estimators import ESTIMATORS, make_estimator
from .features import extract_features, paired_features
from .relations import mi_gap, relate
from .separability import separability_report
from .sliced import direction_pairs, sliced_mi

#: estimator -> default number of slices when --slices is not given (MINE trains a network per slice)
DEFAULT_SLICES = {"hist": 2000, "hist-mm": 2000, "kde": 2000, "ksg": 2000, "mine": 100}


def parse_estimators(text: str) -> list[str]:
    names = [t.strip().lower() for t in text.split(",") if t.strip()]
    if not names:
        raise UnlearnableError("no estimator given (use e.g. --estimators hist,ksg)")
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
        raise UnlearnableError(f"--clean {spec}: cannot align its {len(src)} images with the {len(pd.clean)} of {pd.path}")
    if clean.images.shape != pd.clean.images.shape or not np.array_equal(clean.labels, pd.clean.labels):
        raise UnlearnableError(f"--clean {spec} does not match {pd.path} (shapes or labels differ row by row)")
    if not np.array_equal(clean.images, pd.clean.images):
        raise UnlearnableError(f"--clean {spec} differs from the clean images recovered from {pd.path} "
                               f"(poisoned - perturbation): the pairs would not be aligned")
    return clean


def _model(model_arg: str, pd, *, device: str, train_epochs: int, seed: int):
    """A checkpoint folder, or a registry name trained now on the clean images."""
    from ..models.checkpoint import load_model
    from ..models.registry import _REGISTRY, _key
    from ..runtime import resolve_device
    dev = resolve_device(device)
    p = Path(model_arg)
    if p.exists():
        model, meta = load_model(p, device=dev)
        return model, {"checkpoint": str(p), **meta}
    if _key(model_arg) not in _REGISTRY:
        raise UnlearnableError(f"--model {model_arg!r} is neither a checkpoint folder (model.json + "
                               f"model.safetensors) nor a registry model name")
    from ..train import train_victim, victim_preset
    if pd.test is None:
        raise UnlearnableError(f"{pd.path} has no test split: cannot train --model {model_arg} here; pass a checkpoint")
    cfg = victim_preset("cpu", model=model_arg, epochs=train_epochs, device=device)
    log(f"training {model_arg} on the {len(pd.clean)} clean images for {train_epochs} epochs")
    res = train_victim(pd.clean, pd.test, cfg, seed=seed, desc=f"train {model_arg}")
    return res.model, {"trained_here": True, "model": cfg.model, "epochs": cfg.epochs, "test_acc": res.test_acc,
                       "train_acc": res.train_acc, "seed": seed}


def run_measure(poisoned: list[str], *, clean: str | None = None, model: str = "cnn",
                estimators: list[str] = ("hist", "ksg"), slices: int | None = None, seed: int = 0,
                conditional: bool = True, max_per_class: int | None = None, covariance: bool = True,
                separability: bool = True, device: str = "auto", train_epochs: int = 8,
                accs: list[float] | None = None, clean_acc: float | None = None) -> dict:
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
    net, model_info = _model(model, base, device=device, train_epochs=train_epochs, seed=seed)
    t_feat = time.time()
    zc, zp0 = paired_features(net, clean_ds.take(rows), base.poisoned.take(rows))
    zps = [zp0] + [extract_features(net, pd.poisoned.take(rows)) for pd in sets[1:]]
    lab = labels[rows]
    feat_s = time.time() - t_feat
    out = {"clean": clean or f"{base.path} (poisoned - perturbation)", "model": model_info,
           "features": {"dim": int(zc.shape[1]), "n": int(len(rows)),
                        "n_per_class": {str(int(c)): int((lab == c).sum()) for c in np.unique(lab)},
                        "seconds": round(feat_s, 2)},
           "settings": {"conditional": conditional, "seed": seed, "slices": {}},
           "reference": {}, "results": []}
    for pd in sets:
        out["results"].append({"poisoned": str(pd.path), "method": pd.manifest.get("method"),
                               "eps_255": pd.manifest.get("eps_255"), "mi": {}, "mi_gap": {}})
    with bar(total=len(estimators) * (1 + len(sets)), desc="sliced MI", unit="set") as pb:
        for name in estimators:
            m = slices or DEFAULT_SLICES[name]
            out["settings"]["slices"][name] = m
            theta, phi = direction_pairs(m, zc.shape[1], zc.shape[1], seed)
            est = make_estimator(name)
            pb.set_postfix(estimator=name, m=m)
            t = time.time()
            ref = sliced_mi(zc, zc, lab, estimator=est, conditional=conditional, directions=(theta, phi), seed=seed)
            out["reference"][name] = {**ref.to_dict(), "seconds": round(time.time() - t, 2)}
            pb.update()
            first = None
            for r, zp in zip(out["results"], zps):
                t = time.time()
                res = sliced_mi(zc, zp, lab, estimator=est, conditional=conditional, directions=(theta, phi),
                                seed=seed)
                r["mi"][name] = {**res.to_dict(), "seconds": round(time.time() - t, 2)}
                r["mi_gap"][name] = mi_gap(ref, res)
                if first is None:
                    first = (r["poisoned"], res)
                else:  # gap difference to the first folder, slice by slice (same directions)
                    d = first[1].slices - res.slices
                    r["mi_gap"][name]["vs_first"] = {"folder": first[0], "diff": float(d.mean()),
                                                     "se_paired": float(d.std(ddof=1) / np.sqrt(len(d)))}
                pb.update()
    for r, zp, pd in zip(out["results"], zps, sets):
        if covariance:
            r["covariance"] = compare_covariance(zc, zp, lab)
            for side in ("clean", "poisoned"):
                r["covariance"][side].pop("per_class", None)
        if separability:
            r["separability"] = separability_report(clean_ds.images[rows], pd.poisoned.images[rows], lab)
    if accs is not None:
        if clean_acc is None or len(accs) != len(sets):
            raise UnlearnableError("--acc needs one accuracy per --poisoned folder and --clean-acc")
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
