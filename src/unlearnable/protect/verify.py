"""``verify_folder``: a quick check that a protected folder hurts a model trained on it.

What it does (docs/protect.md has the reasoning):

* **Pairs.** Every image in ``OUT_DIR/manifest.json`` whose input (in IN_DIR) and
  output still have the recorded SHA-256; anything else is listed and left out.
* **The victim's view.** Each image (original and protected) is resized to the working
  resolution with Pillow's antialiased bilinear filter, a typical training pipeline and a
  different resampler from the area averaging that ``protect`` optimised through; alpha
  is dropped; grey images in a colour folder are replicated to RGB.
* **Split.** The user's images are split per class (seeded): ``holdout`` (default 0.25)
  of each class, at least one image, is held out as *clean* test images and the rest
  train; with ``folds`` = K >= 2, K stratified folds each serve once as the test part and
  the counts are pooled. The held-out images' protected versions are never trained on.
* **Victims.** The CPU victim (``victim_preset("cpu")``, 4-conv CNN, ``epochs`` epochs)
  trained on training images of the user's classes (original, then protected) plus a
  class-balanced reference subset, and tested on the held-out clean images (accuracy on
  the protected classes) and on the reference's clean test split (accuracy on the other
  classes), under three training-data conditions: as written; after JPEG at
  ``jpeg_quality`` (encoded at full resolution, as a platform re-compressing uploads
  would, then resized; the reference images are compressed too); after grayscale
  (BT.601 luminance replicated to 3 channels, training data only, colour folders only).
  Test images are never transformed. Two more attackers train on the data as written:
  *early stopping* (the run keeps the epoch with the best accuracy on the held-out
  images themselves: an upper bound on what an attacker who stops early with a few clean
  labelled images gets) and *a fine-tuned prior* (the same CNN first trained on the
  reference training images alone, then fine-tuned whole, with a new head, on the
  victim's training data: an attacker who starts from a pretrained model).
* **MI gap.** The sliced MI (KSG, class-conditional over the user's classes) between the
  features of the clean-trained victim on the original and on the protected training
  images, against the originals with themselves (:mod:`unlearnable.measure`), when every
  class has at least 10 training images.
* **Verdict.** One line that reports the numbers; it claims an effect only when the drop
  is at least 10 points and twice its binomial standard error under the worst case (the
  condition where the protected-trained victim does best on the held-out images), and
  even then only for these kinds of model and training.
"""

from __future__ import annotations

import io
import math
import shutil
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
from PIL import Image

from ..data import ImageDataset
from ..errors import UnlearnableError
from ..fsutil import write_json
from ..progress import Reported, bar, log
from ..train import train_victim, victim_preset
from ..train.loops import predict
from ..train.pretrain import save_prior
from .images import UnreadableImage, load_image
from .manifest import NAME, read_manifest_file, sha256_file
from .reference import load_reference, to_channels

MIN_PER_CLASS_FOR_MI = 10
MI_SLICES = 500


def _attacker_view(pixels: np.ndarray, size: int, jpeg: int | None = None) -> np.ndarray:
    """uint8 (H, W, C) -> uint8 (S, S, C): optional JPEG at full resolution, then a bilinear resize."""
    im = Image.fromarray(pixels[..., 0] if pixels.shape[2] == 1 else pixels)
    if jpeg is not None:
        buf = io.BytesIO()
        im.save(buf, format="JPEG", quality=jpeg)
        buf.seek(0)
        im = Image.open(buf)
        im.load()
    a = np.asarray(im.resize((size, size), Image.Resampling.BILINEAR), dtype=np.uint8)
    return a[..., None] if a.ndim == 2 else a


def _jpeg_small(images: np.ndarray, quality: int) -> np.ndarray:
    return np.stack([_attacker_view(x, x.shape[0], quality) for x in images])


def _grayscale(images: np.ndarray) -> np.ndarray:
    return to_channels(to_channels(images, 1), images.shape[-1])


def _pairs(in_root: Path, out_root: Path, entries: list[dict]):
    ok, left_out = [], []
    for e in entries:
        src, dst = in_root / e["input"], out_root / e["output"]
        if not src.is_file() or not dst.is_file():
            left_out.append({"input": e["input"], "reason": "input or output file missing"})
        elif sha256_file(src) != e.get("sha256"):
            left_out.append({"input": e["input"], "reason": "input changed since it was protected"})
        elif sha256_file(dst) != e.get("output_sha256"):
            left_out.append({"input": e["input"], "reason": "output changed since it was written"})
        else:
            ok.append((e, src, dst))
    return ok, left_out


def _splits(labels: np.ndarray, holdout: float, folds: int, seed: int) -> list[np.ndarray]:
    """Boolean test masks, one per fold, stratified by class."""
    rng = np.random.default_rng(seed)
    n_folds = max(1, folds)
    masks = [np.zeros(len(labels), dtype=bool) for _ in range(n_folds)]
    for c in np.unique(labels):
        ix = rng.permutation(np.flatnonzero(labels == c))
        if len(ix) < 2:
            raise UnlearnableError(f"class {int(c)} has {len(ix)} image(s): verify needs at least 2 per class "
                                   f"(one to train on, one to test)")
        if folds >= 2:
            if len(ix) < folds:
                raise UnlearnableError(f"a class has {len(ix)} images: too few for {folds} folds")
            for j, i in enumerate(ix):
                masks[j % folds][i] = True
        else:
            n_test = min(len(ix) - 1, max(1, int(round(holdout * len(ix)))))
            masks[0][ix[:n_test]] = True
    return masks


def _acc(correct: int, n: int) -> dict:
    p = correct / n if n else None
    se = math.sqrt(p * (1 - p) / n) if n else None
    return {"acc": p, "se": se, "correct": int(correct), "n": int(n)}


def _mi_gap(model, clean: np.ndarray, prot: np.ndarray, labels: np.ndarray, seed: int) -> dict:
    from ..measure import KSGMI, extract_features, mi_gap, sliced_mi
    counts = np.bincount(labels)
    if counts[counts > 0].min() < MIN_PER_CLASS_FOR_MI:
        return {"skipped": f"needs at least {MIN_PER_CLASS_FOR_MI} training images per class, "
                           f"have {int(counts[counts > 0].min())}"}
    names = [str(i) for i in range(int(labels.max()) + 1)]
    zc = extract_features(model, ImageDataset(clean, labels, names))
    zp = extract_features(model, ImageDataset(prot, labels, names))
    ref = sliced_mi(zc, zc, labels, estimator=KSGMI(), m=MI_SLICES, seed=seed)
    res = sliced_mi(zc, zp, labels, estimator=KSGMI(), m=MI_SLICES, seed=seed)
    g = mi_gap(ref, res)
    return {"estimator": "ksg", "slices": MI_SLICES, "n": int(len(labels)), "clean": ref.mean, "protected": res.mean,
            "gap": g["gap"], "se_paired": g.get("se_paired")}


#: The attackers beyond the scratch victim (condition names in the report).
ATTACKERS = ("early-stop", "prior-finetune")


def _reference_prior(ref, ref_train: np.ndarray, ref_test, cfg, seed: int, workdir: Path) -> Path:
    """The fine-tuning attacker's prior: the victim's CNN trained on the reference training
    images alone (their own classes), saved in ``workdir``; returns its checkpoint folder."""
    train = ImageDataset(ref_train, ref.train.labels, list(ref.train.class_names))
    test = ImageDataset(ref_test, ref.test.labels, list(ref.train.class_names)) if ref_test is not None else train
    log("prior for the fine-tuning attacker: the victim model on the reference images alone")
    res = train_victim(train, test, cfg, seed=seed, desc="prior (reference)")
    folder = workdir / "prior"
    save_prior(res.model, folder, train, data_name=ref.spec, model_name=cfg.model, protocol="st", epochs=cfg.epochs,
               seed=seed, test_acc=res.test_acc)
    return folder


def _fold(fold, masks, test_mask, views, labels, ref, ref_test, k_user, all_names, conditions, counts, cfg, prior,
          seed, mi, mi_report, victims):
    """Every condition's two victims (original, protected) on one fold; adds to ``counts``
    and returns the MI report (measured once, on the first fold's clean scratch victim)."""
    tr = ~test_mask
    test_x = views["clean"][test_mask]
    test_y = labels[test_mask]
    held_out = ImageDataset(test_x, test_y, all_names)  # the early stopper's (optimistic) validation set
    if ref_test is not None:
        test_x = np.concatenate([test_x, ref_test])
        test_y = np.concatenate([test_y, ref.test.labels + k_user])
    test_ds = ImageDataset(test_x, test_y, all_names)
    for cond, (clean_v, prot_v, ref_v, how) in conditions.items():
        run_cfg = replace(cfg, init=str(prior), finetune="full").validate() if how == "prior-finetune" else cfg
        for version, user_v in (("clean", clean_v), ("protected", prot_v)):
            train_ds = ImageDataset(np.concatenate([user_v[tr], ref_v]),
                                    np.concatenate([labels[tr], ref.train.labels + k_user]), all_names)
            log(f"fold {fold + 1}/{len(masks)}: victim on {version} data, {cond}")
            res = train_victim(train_ds, test_ds, run_cfg, seed=seed, desc=f"{version}/{cond}",
                               val=held_out if how == "early-stop" else None)
            victims.update(1)
            pred = predict(res.model, test_x, cfg.channels_last)
            user = test_y < k_user
            c = counts[cond][version]
            c["user"][0] += int((pred[user] == test_y[user]).sum())
            c["user"][1] += int(user.sum())
            c["other"][0] += int((pred[~user] == test_y[~user]).sum())
            c["other"][1] += int((~user).sum())
            c["did_not_learn"] += bool(res.extra.get("did_not_learn"))
            if mi and mi_report is None and cond == "none" and version == "clean":
                mi_report = _mi_gap(res.model, views["clean"][tr], views["protected"][tr], labels[tr], seed)
    return mi_report


def verify_folder(in_dir, out_dir, *, reference: str | None = None, out=None, holdout: float = 0.25, folds: int = 1,
                  epochs: int = 10, jpeg_quality: int = 20, reference_per_class: int | None = None,
                  test_per_class: int = 100, size: int | None = None, model: str = "cnn", seed: int = 0,
                  device: str = "auto", mi: bool = True, attackers: bool = True, on_progress=None) -> dict:
    """Train quick victims on the original and on the protected images and report (see module doc).

    ``attackers``: also the early-stopping and fine-tuned-prior victims (False: the scratch
    victim under the filters only). ``on_progress(done, total)``, when given, is called as
    each victim (and the attackers' prior) finishes training.

    Returns the report as a dict (also written to ``out`` when given); its ``verdict`` is
    one line.
    """
    t0 = time.time()
    if not 0 < holdout < 1:
        raise UnlearnableError(f"holdout must be a fraction in (0, 1), got {holdout}")
    if folds < 1 or not 1 <= jpeg_quality <= 95:
        raise UnlearnableError("folds must be >= 1 and the JPEG quality in 1..95")
    in_root, out_root = Path(in_dir).resolve(), Path(out_dir).resolve()
    mpath = out_root / NAME
    if not mpath.is_file():
        raise UnlearnableError(f"{mpath} not found: run 'unlearnable protect {in_dir} {out_dir}' first")
    manifest = read_manifest_file(mpath)
    settings = manifest.get("settings", {})
    size = size or settings.get("config", {}).get("working_size", 32)
    spec = reference or settings.get("reference", {}).get("spec", "fashion-mnist")
    per_class = reference_per_class or settings.get("config", {}).get("reference_per_class", 200)
    pairs, left_out = _pairs(in_root, out_root, manifest.get("images", []))
    if not pairs:
        raise UnlearnableError(f"no usable (original, protected) pairs in {out_dir}")

    # The victim's view of every pair: as written and after JPEG.
    views = {"clean": [], "protected": [], "clean_jpeg": [], "protected_jpeg": []}
    names = sorted({e["class"] for e, _, _ in pairs})
    labels, kept = [], []
    for e, src, dst in bar(pairs, desc="loading pairs", unit="img"):
        try:
            a, b = load_image(src).pixels, load_image(dst).pixels
        except UnreadableImage as err:
            left_out.append({"input": e["input"], "reason": str(err)})
            continue
        views["clean"].append(_attacker_view(a, size))
        views["protected"].append(_attacker_view(b, size))
        views["clean_jpeg"].append(_attacker_view(a, size, jpeg_quality))
        views["protected_jpeg"].append(_attacker_view(b, size, jpeg_quality))
        labels.append(names.index(e["class"]))
        kept.append(e["input"])
    channels = 3 if any(v.shape[2] == 3 for v in views["clean"]) else 1
    views = {k: np.stack([to_channels(x[None], channels)[0] for x in v]) for k, v in views.items()}
    labels = np.asarray(labels, dtype=np.int64)
    k_user = len(names)

    ref = load_reference(spec, size=size, per_class=per_class, seed=seed, test_per_class=test_per_class)
    ref_train = ref.images(channels)
    ref_test = ref.images(channels, "test") if ref.test is not None else None
    # condition -> (user images as trained on: original, protected; reference images; how the victim trains)
    conditions = {"none": (views["clean"], views["protected"], ref_train, "scratch"),
                  f"jpeg{jpeg_quality}": (views["clean_jpeg"], views["protected_jpeg"],
                                          _jpeg_small(ref_train, jpeg_quality), "scratch")}
    if channels == 3:
        conditions["grayscale"] = (_grayscale(views["clean"]), _grayscale(views["protected"]), _grayscale(ref_train),
                                   "scratch")
    if attackers:
        for how in ATTACKERS:
            conditions[how] = (views["clean"], views["protected"], ref_train, how)
    all_names = [f"user:{n}" for n in names] + [f"reference:{n}" for n in ref.train.class_names]
    cfg = victim_preset("cpu", model=model, epochs=epochs, device=device)
    masks = _splits(labels, holdout, folds, seed)
    counts = {c: {v: {"user": [0, 0], "other": [0, 0], "did_not_learn": 0} for v in ("clean", "protected")}
              for c in conditions}
    mi_report = {"skipped": "disabled"} if not mi else None
    workdir = Path(tempfile.mkdtemp(prefix="unlearnable-verify-"))
    try:
        with Reported(int(attackers) + 2 * len(masks) * len(conditions), on_progress, desc="victims",
                      unit="model") as victims:
            prior = _reference_prior(ref, ref_train, ref_test, cfg, seed, workdir) if attackers else None
            if attackers:
                victims.update(1)
            for fold, test_mask in enumerate(masks):
                mi_report = _fold(fold, masks, test_mask, views, labels, ref, ref_test, k_user, all_names,
                                  conditions, counts, cfg, prior, seed, mi, mi_report, victims)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    results = {}
    for cond, by_version in counts.items():
        r = {v: {"protected_classes": _acc(*c["user"]),
                 "other_classes": _acc(*c["other"]) if c["other"][1] else None,
                 "did_not_learn_folds": c["did_not_learn"]} for v, c in by_version.items()}
        a, b = r["clean"]["protected_classes"], r["protected"]["protected_classes"]
        r["gap_pts"] = round(100 * (a["acc"] - b["acc"]), 2)
        r["gap_se_pts"] = round(100 * math.hypot(a["se"], b["se"]), 2)
        results[cond] = r
    report = {
        "in_dir": str(in_root), "out_dir": str(out_root), "images": len(kept), "classes": names,
        "left_out": left_out,
        "split": {"folds": len(masks), "holdout": holdout if folds < 2 else None,
                  "held_out_images": int(sum(m.sum() for m in masks)), "seed": seed,
                  "note": "held-out images are tested clean; their protected versions are not trained on"},
        "victim": {"model": cfg.model, "epochs": cfg.epochs, "size": size, "channels": channels,
                   "resize": "Pillow bilinear (antialiased)"},
        "attackers": {"early-stop": "the epoch best on the held-out images (an upper bound on early stopping)",
                      "prior-finetune": "the same model pretrained on the reference images, then fine-tuned "
                                        "whole with a new head"} if attackers else {},
        "reference": {"spec": str(spec), "classes": ref.train.class_names, "train_images": len(ref.train),
                      "test_images": 0 if ref.test is None else len(ref.test)},
        "results": results, "mi_gap": mi_report,
        "protect_settings": {k: settings.get(k) for k in ("strength", "eps_255", "key")},
    }
    report["verdict"] = verdict(report)
    report["seconds"] = round(time.time() - t0, 1)
    if out is not None:
        write_json(out, report)
    return report


_LABELS = {"none": "plain training", "early-stop": "early stopping", "prior-finetune": "fine-tuning a prior"}


def _label(condition: str) -> str:
    return f"JPEG q{condition[4:]}" if condition.startswith("jpeg") else _LABELS.get(condition, condition)


def _failed(r: dict) -> bool:
    """A victim of this condition learned nothing (train.standard.did_not_learn) in some fold:
    its accuracy is chance for a reason unrelated to the images."""
    return any(r[v].get("did_not_learn_folds") for v in ("clean", "protected"))


def _holds(r: dict) -> bool:
    """A drop worth reporting: at least 10 points and twice its standard error, between
    victims that both learned."""
    return r["gap_pts"] >= 10 and r["gap_pts"] >= 2 * r["gap_se_pts"] and not _failed(r)


def verdict(report: dict) -> str:
    """One modest line: the scratch victim's result, every other condition's, and a claim
    only when the drop holds under the worst case (the condition where the victim trained
    on the protected images does best on the held-out ones)."""
    results = report["results"]
    r = results["none"]
    a, b = r["clean"]["protected_classes"], r["protected"]["protected_classes"]
    n, v = a["n"], report["victim"]
    what = f"a small {v['model']} trained {v['epochs']} epochs at {v['size']} px, {n} held-out images"
    if n < 10:
        return (f"Too few held-out images ({n}) for a conclusion: accuracy {a['acc']:.0%} (trained on originals) vs "
                f"{b['acc']:.0%} (trained on protected); add images or use more folds (cross-validation).")
    extra = "".join(f"; after {_label(c)}: {x['clean']['protected_classes']['acc']:.0%} -> "
                    f"{x['protected']['protected_classes']['acc']:.0%}"
                    for c, x in results.items() if c != "none")
    failed = [_label(c) for c, x in results.items() if _failed(x)]
    if failed:
        extra += (f"; a victim did not learn at all with {', '.join(failed)} (chance accuracy, not the "
                  f"protection's doing, so no effect is claimed from it)")
    worst = max(results, key=lambda c: results[c]["protected"]["protected_classes"]["acc"])  # "none" first on ties
    w = results[worst]
    if _holds(r) and _holds(w):
        tail = "" if worst == "none" else (f" (the strongest attacker tried, {_label(worst)}, still got only "
                                           f"{w['protected']['protected_classes']['acc']:.0%})")
        return (f"In this quick check ({what}), training on the protected instead of the original images lowered "
                f"accuracy on your held-out images from {a['acc']:.0%} to {b['acc']:.0%}{extra}{tail}; this "
                f"suggests the protection works against these kinds of training, not that it stops every model.")
    if _holds(r):
        return (f"In this quick check ({what}), training on the protected instead of the original images lowered "
                f"accuracy on your held-out images from {a['acc']:.0%} to {b['acc']:.0%}{extra}; but with "
                f"{_label(worst)} a model trained on the protected images reached "
                f"{w['protected']['protected_classes']['acc']:.0%} (vs {w['clean']['protected_classes']['acc']:.0%} "
                f"from the originals): no clear effect against that attacker, so do not rely on the protection "
                f"for these images.")
    return (f"In this quick check ({what}), accuracy on your held-out images was {a['acc']:.0%} when trained on the "
            f"originals and {b['acc']:.0%} on the protected images{extra}: no clear effect, so do not rely on "
            f"the protection for these images.")


def format_report(report: dict) -> str:
    """A small plain-text table of a verify report."""
    lines = [f"{report['images']} image(s) of {len(report['classes'])} class(es); "
             f"{report['split']['held_out_images']} held out (clean) for testing; reference "
             f"{report['reference']['spec']} ({report['reference']['train_images']} train images)",
             f"{'training data':<14} {'victim on':<10} {'your classes':>13} {'other classes':>14} {'gap (pts)':>14}"]
    for cond, r in report["results"].items():
        for v in ("clean", "protected"):
            u, o = r[v]["protected_classes"], r[v]["other_classes"]
            gap = f"{r['gap_pts']:.1f} +- {r['gap_se_pts']:.1f}" if v == "protected" else ""
            failed = r[v].get("did_not_learn_folds")
            lines.append(f"{cond:<14} {v:<10} {u['acc']:>12.1%} {'' if o is None else format(o['acc'], '.1%'):>14} "
                         f"{gap:>14}" + (f"  (victim did not learn: {failed} fold(s))" if failed else ""))
    m = report.get("mi_gap") or {}
    if "gap" in m:
        lines.append(f"MI gap (sliced KSG, clean victim, n={m['n']}): {m['gap']:.4f} nats "
                     f"(paired SE {m['se_paired']:.4f})")
    elif m:
        lines.append(f"MI gap: not computed ({m.get('skipped')})")
    lines.append(f"verdict: {report['verdict']}")
    return "\n".join(lines)
