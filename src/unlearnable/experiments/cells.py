"""What each kind of cell does (called by the runner, in this process or in a worker).

Every function returns the measured values for the cell's record; artefacts are
written atomically before the record exists, so a record always implies its artefacts.

Which model g measures MI (``mi.model``): ``victim`` (default) uses the victim trained
in the cell itself, i.e. on the (defended) protected data, as the paper's Tables 1, 12
and 13 do (one clean reference per victim, protocol and defense); ``clean`` uses the
victim trained on clean data with the same settings (``--mi-model clean`` of ``demo``,
``compare`` and ``measure``, whose default is the same as here).
X are the clean training images and X' the protected ones as released (before any
defense); for the clean cell X' = X, so its value is the paper's "Clean" reference
SMI(g(X); g(X)).
"""

from __future__ import annotations

import numpy as np
import torch

from ..errors import UnlearnableError
from ..fsutil import save_npz
from .loading import load_data
from .plan import Task, victim_settings

_POISON_CACHE: dict = {}


def run_cell(t: Task, store, device: str) -> dict:
    return {"poison": _poison, "separability": _separability, "victim": _victim, "mi": _mi,
            "covariance": _covariance}[t.kind](t, store, device)


def _read_poison(store, key: str):
    from ..data import read_poisoned
    path = store.poison_dir(key)
    if key not in _POISON_CACHE:
        if not (path / "manifest.json").is_file():
            raise UnlearnableError(f"poisoned data {path} is missing (its cell has a record but no artefact)")
        if len(_POISON_CACHE) > 4:
            _POISON_CACHE.pop(next(iter(_POISON_CACHE)))
        _POISON_CACHE[key] = read_poisoned(path)
    return _POISON_CACHE[key]


def _poison(t: Task, store, device: str) -> dict:
    import dataclasses

    from ..attacks import get_attack
    from ..data.dataset import DataSplits
    from ..poison import poison_dataset
    p = t.params
    data = load_data(p["data"])
    out = store.poison_dir(t.key)
    if (out / "manifest.json").is_file():  # finished earlier; the record was lost with a kill
        import json
        manifest = json.loads((out / "manifest.json").read_text())
    else:
        cls = get_attack(p["method"])
        overrides = dict(p["options"])
        if "device" in {f.name for f in dataclasses.fields(cls.Config)}:
            overrides["device"] = device
        extra = {k: (tuple(p[k]) if k == "classes" else p[k]) for k in ("classes", "ratio") if p.get(k) is not None}
        manifest = poison_dataset(p["method"], DataSplits(data.train, data.test, data.name), out, seed=p["seed"],
                                  preset=p["preset"], overrides=overrides, resume=True, **extra)
    keep = ("method", "eps_255", "linf_255", "norm", "l0_pixels", "l0_max", "counts", "resumed_from_epoch")
    return {**{k: manifest[k] for k in keep if k in manifest},
            "generate_s": manifest.get("timings", {}).get("generate_s"),
            "generation_history": manifest.get("history", []),
            # the selection without its index lists (they stay in the manifest on disk)
            "selection": {k: v for k, v in (manifest.get("selection") or {}).items()
                          if not k.endswith("indices")} or None}


def _separability(t: Task, store, device: str) -> dict:
    from ..measure import separability_report
    pd = _read_poison(store, t.params["poison"])
    return separability_report(pd.clean.images, pd.poisoned.images, pd.clean.labels)


@torch.no_grad()
def per_class_accuracy(model, test, device) -> list[float]:
    """Clean test accuracy of each class (eval mode, batched)."""
    from ..train.loops import TensorData, batches
    model.eval()
    dev = next(model.parameters()).device
    data = TensorData.from_dataset(test, dev)
    correct = torch.zeros(test.num_classes, dtype=torch.long)
    for idx in batches(len(data), 512, None, dev):
        x, y = data.batch(idx)
        pred = model(x).argmax(1)
        correct += torch.bincount(y[pred == y].cpu(), minlength=test.num_classes)
    counts = np.bincount(test.labels, minlength=test.num_classes)
    return [float(c) / n if n else float("nan") for c, n in zip(correct.tolist(), counts)]


def _victim(t: Task, store, device: str) -> dict:
    from ..defenses import parse_defenses
    from ..models.checkpoint import save_model
    from ..train import train_victim, victim_preset
    from ..train.protocols import get_protocol, protocol_names
    p = t.params
    data = load_data(p["data"])
    pd = _read_poison(store, p["poison"]) if p["poison"] else None
    train = pd.poisoned if pd is not None else data.train
    # the protected classes as the poison resolved them (indices), else as the spec gave them
    selection = (pd.manifest.get("selection") or {}) if pd is not None else {}
    classes = selection.get("protected_classes") or p.get("classes")
    v, proto = p["victim"], p["protocol"]
    preset, opts = victim_settings(v, proto)
    cfg = victim_preset(preset, **opts, device=device)
    defenses = parse_defenses(p["defense"])
    if proto["name"] in protocol_names():
        res = get_protocol(proto["name"])(train, data.test, cfg, seed=p["seed"], defenses=defenses,
                                          options=dict(proto["options"]))
    else:  # "st" before train/standard.py registers it: data defenses, then the standard loop
        for d in defenses:
            train = d.apply(train, seed=p["seed"], device=device)
        res = train_victim(train, data.test, cfg, seed=p["seed"], desc=t.describe())
    out = {"test_acc": float(res.test_acc), "train_acc": float(res.train_acc), "history": res.history,
           "train_seconds": round(float(res.seconds), 2)}
    extra = res.metrics() if hasattr(res, "metrics") else {}
    for k, val in extra.items():  # protocol-specific numbers (e.g. simclr's probe) pass through
        if k not in out and k not in ("config", "history", "seconds") and isinstance(val, (int, float, str)):
            out[k] = val
    if res.model is not None:
        pc = per_class_accuracy(res.model, data.test, device)
        out["test_acc_per_class"] = [round(a, 6) for a in pc]
        if classes:
            counts = np.bincount(data.test.labels, minlength=data.test.num_classes)
            mask = np.zeros(len(counts), dtype=bool)
            mask[list(classes)] = True
            acc = np.nan_to_num(np.asarray(pc)) * counts
            out["test_acc_protected_classes"] = float(acc[mask].sum() / max(1, counts[mask].sum()))
            out["test_acc_other_classes"] = float(acc[~mask].sum() / max(1, counts[~mask].sum()))
    if t.save_model:
        if res.model is None or not hasattr(res.model, "features"):
            raise UnlearnableError(f"protocol {proto['name']!r} returned no model with features(x): MI cannot be measured")
        save_model(res.model, store.model_dir(t.key), name=cfg.model, in_channels=data.train.channels,
                   num_classes=data.train.num_classes, image_size=data.train.image_size[0])
    return out


def _mi_features(t: Task, store, device: str):
    """Features g(X), g(X') of the rows MI is measured on, and their labels."""
    from ..measure import extract_features
    from ..models.checkpoint import load_model
    p = t.params
    data = load_data(p["data"])
    if p["poison"]:
        pd = _read_poison(store, p["poison"])
        clean, poisoned = pd.clean, pd.poisoned
    else:
        clean = poisoned = data.train
    rows = np.arange(len(clean))
    if p["max_per_class"]:
        rng = np.random.default_rng(p["seed"])
        rows = np.sort(np.concatenate([rng.permutation(np.flatnonzero(clean.labels == c))[:p["max_per_class"]]
                                       for c in np.unique(clean.labels)]))
    model, _ = load_model(store.model_dir(p["model"]), device=device)
    zc = extract_features(model, clean.take(rows))
    zp = zc if poisoned is clean else extract_features(model, poisoned.take(rows))
    return zc, zp, clean.labels[rows]


def _mi(t: Task, store, device: str) -> dict:
    from ..measure import make_estimator, sliced_mi
    from ..measure.sliced import direction_pairs
    p = t.params
    zc, zp, labels = _mi_features(t, store, device)
    theta, phi = direction_pairs(p["m"], zc.shape[1], zp.shape[1], p["seed"])
    res = sliced_mi(zc, zp, labels, estimator=make_estimator(p["estimator"]), conditional=p["conditional"],
                    directions=(theta, phi), seed=p["seed"])
    save_npz(store.slices_path(t.key), slices=np.asarray(res.slices, dtype=np.float64))
    d = res.to_dict()
    return {"mean": float(d["mean"]), "se": float(d["se"]), "m": d["m"], "n": d["n"], "dim": int(zc.shape[1]),
            "n_per_class": d["n_per_class"], "params": d["params"], "conditional": d["conditional"]}


def _covariance(t: Task, store, device: str) -> dict:
    from ..measure import compare_covariance
    zc, zp, labels = _mi_features(t, store, device)
    c = compare_covariance(zc, zp, labels)
    for side in ("clean", "poisoned"):
        c[side].pop("per_class", None)
    return c
