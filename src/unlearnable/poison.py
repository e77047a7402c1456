"""Protect a dataset with any registered attack and write it in the lossless format.

Generation state lives in ``OUT.partial/`` (checkpointed each epoch) until the protected
dataset is complete; then the dataset appears at ``OUT`` in one rename and the partial
folder is removed. ``resume=True`` continues from the last checkpoint of a killed run.

Selective protection (docs/partial-poisoning.md): ``classes`` protects only the images
of those classes (the one-class setting of the MI-UE paper, arXiv:2603.03725, Appendix
G.1, Tables 16-18), ``ratio`` a seeded, class-stratified fraction of the training set;
given both, the fraction is taken within the chosen classes. The attack always runs on
the whole training set, because its objective needs the other images as context (MI-UE's
similarity term contrasts each class with the others; the source model learns all
classes). The paper does not say how its one-class poisons were generated; this is our
choice. Then the perturbations of the images outside the selection are set to zero
before quantisation, so those images are written unchanged, byte for byte.
"""

from __future__ import annotations

import math
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from .attacks import get_attack
from .data import load_dataset, quantize, spec_path, write_poisoned
from .data.dataset import DataSplits
from .errors import UnlearnableError, check_seed
from .fsutil import check_apart, exclusive_lock, prepare_output_dir, remove_stale_temp_dirs
from .progress import log

# Seeds the selection stream as default_rng([seed, SELECTION_STREAM]): independent of the
# subset draw (default_rng(seed)) and of the attack's torch generator with the same seed.
SELECTION_STREAM = 0x5E1EC7


def partial_dir(out: Path) -> Path:
    return out.with_name(out.name + ".partial")


def parse_classes(spec, class_names: list[str]) -> list[int]:
    """Class indices from ``"0,3"``, ``"Bag,Sneaker"``, a mix, or a list of ints/names.

    A token that is a class name is that class (so ImageFolder classes named "3" mean the
    folder, whatever its index); otherwise it must be an integer index. Names also match
    case-insensitively when unambiguous. Returns sorted unique indices.
    """
    tokens = [t.strip() for t in spec.split(",")] if isinstance(spec, str) else [str(t).strip() for t in spec]
    if not tokens or any(not t for t in tokens):
        raise UnlearnableError(f"`classes`: expected a comma list of class indices or names, got {spec!r}")
    lower: dict[str, list[int]] = {}
    for i, name in enumerate(class_names):
        lower.setdefault(name.lower(), []).append(i)
    chosen = set()
    for t in tokens:
        if t in class_names:
            chosen.add(class_names.index(t))
        elif len(lower.get(t.lower(), [])) == 1:
            chosen.add(lower[t.lower()][0])
        else:
            try:
                i = int(t)
            except ValueError:
                raise UnlearnableError(f"`classes`: unknown class {t!r}; classes are "
                                       f"{', '.join(f'{i}={n}' for i, n in enumerate(class_names))}") from None
            if not 0 <= i < len(class_names):
                raise UnlearnableError(f"`classes`: class index {i} out of range 0..{len(class_names) - 1}")
            chosen.add(i)
    return sorted(chosen)


def check_ratio(ratio: float) -> float:
    ratio = float(ratio)
    if not (0 < ratio <= 1) or math.isnan(ratio):
        raise UnlearnableError(f"`ratio` must be in (0, 1], got {ratio}")
    return ratio


def ratio_count(ratio: float, n: int) -> int:
    """How many of ``n`` eligible images a ratio selects: ``ratio * n`` rounded to the
    nearest integer, halves up, and at least one (a positive ratio protects something)."""
    return min(n, max(1, math.floor(ratio * n + 0.5 + 1e-9)))


def select_protected(labels: np.ndarray, *, classes: list[int] | None = None, ratio: float | None = None,
                     seed: int = 0) -> np.ndarray:
    """Boolean mask of the training images to protect.

    ``classes``: only images with these labels are eligible (all images when None).
    ``ratio``: protect :func:`ratio_count` of the eligible images, stratified by class
    with the Sainte-Lague (Webster) rule: each class's images are put in a random order
    (seeded by ``seed``), the j-th of a class of n_c gets the key (j + 1/2) / n_c, and the
    images with the smallest keys are taken (ties: lower class index first). Each class
    thus gets its proportional share (equal-sized classes differ by at most one image),
    and for one seed a smaller ratio always selects a subset of a larger one.
    """
    labels = np.asarray(labels, dtype=np.int64)
    eligible = np.ones(len(labels), bool) if classes is None else np.isin(labels, classes)
    if classes is not None and not eligible.any():
        raise UnlearnableError(f"`classes` {classes}: no training image has these labels")
    if ratio is None:
        return eligible
    k = ratio_count(check_ratio(ratio), int(eligible.sum()))
    rng = np.random.default_rng([seed, SELECTION_STREAM])
    perm = rng.permutation(np.flatnonzero(eligible))
    perm = perm[np.argsort(labels[perm], kind="stable")]  # grouped by class, random order within
    lab = labels[perm]
    sizes = np.bincount(lab, minlength=int(labels.max(initial=0)) + 1)
    rank = np.arange(len(perm)) - (np.cumsum(sizes) - sizes)[lab]
    key = (rank + 0.5) / sizes[lab]
    mask = np.zeros(len(labels), bool)
    mask[perm[np.lexsort((rank, lab, key))[:k]]] = True
    return mask


def poison_dataset(method: str, data: str | DataSplits, out: str | Path, *, subset: int | None = None,
                   seed: int = 0, preset: str = "cpu", overrides: dict | None = None, resume: bool = False,
                   overwrite: bool = False, classes=None, ratio: float | None = None) -> dict:
    """Run ``method`` on the training split of ``data`` and write the result to ``out``.

    Returns the manifest. ``overrides`` are attack config fields (e.g. ``{"eps": 8/255}``).
    ``classes`` (indices or names, or a comma string) and ``ratio`` (0 < ratio <= 1)
    restrict which images are protected, see the module docstring; the manifest's
    ``selection`` records them and the protected rows.
    """
    out = Path(out)
    check_seed(seed)
    if ratio is not None:
        check_ratio(ratio)
    attack = get_attack(method).from_preset(preset, **(overrides or {}))
    prepare_output_dir(out, overwrite, inputs=[spec_path(data)])
    work = partial_dir(out)
    check_apart(work, [spec_path(data)])
    if work.exists() and not resume:
        if not overwrite:
            raise UnlearnableError(f"an unfinished run exists in {work}; pass `resume` to continue it "
                                   f"or `overwrite` to start again")
        if not is_partial_dir(work):
            raise UnlearnableError(f"{work} is not an unfinished run of this tool; refusing to remove it")
    # Everything that can be refused is checked above; the data is read before anything is
    # created, so a bad data spec leaves nothing behind either.
    splits = load_dataset(data) if not isinstance(data, DataSplits) else data
    train = splits.train.stratified_subset(subset, seed) if subset else splits.train
    if len(train) == 0:
        raise UnlearnableError(f"{splits.name}: no training images to protect")
    protected, selection = None, None
    if classes is not None or ratio is not None:
        class_ids = parse_classes(classes, train.class_names) if classes is not None else None
        protected = select_protected(train.labels, classes=class_ids, ratio=ratio, seed=seed)
        selection = {"protected_classes": class_ids, "ratio": ratio, "seed": seed,
                     "ratio_scheme": None if ratio is None else "class-stratified (Sainte-Lague), "
                     "round(ratio * eligible) half up, at least 1; eligible = images of protected_classes or all"}
        log(f"{method}: protecting {int(protected.sum())} of {len(train)} images"
            + (f" (classes {', '.join(train.class_names[c] for c in class_ids)})" if class_ids else "")
            + (f" (ratio {ratio})" if ratio is not None else ""))
    log(f"{method}: {len(train)} training images {train.images.shape[1:]} from {splits.name}")
    if work.exists() and not resume:
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    with exclusive_lock(work / LOCK_NAME, busy=f"another run is writing {out} (its lock is held); "
                                                  f"wait for it or choose another output"):
        t0 = time.time()
        try:
            result = attack.generate(train, seed=seed, workdir=work, resume=resume)
            check_generation(result, method)
        except GenerationDiverged:
            shutil.rmtree(work, ignore_errors=True)  # its checkpoint would only diverge again
            raise
        gen_s = time.time() - t0
        eps = attack.config.eps
        delta = result.delta
        if protected is not None:  # the attack saw every image; only the selection keeps its perturbation
            delta = delta.clone()
            delta[torch.from_numpy(~protected)] = 0
        poisoned = quantize(train.images, delta, eps)
        selected = np.ones(len(train), bool) if protected is None else protected
        if not np.any(poisoned[selected] != train.images[selected]):
            shutil.rmtree(work, ignore_errors=True)
            raise UnlearnableError(f"{method}: the perturbation rounds to zero on every selected image; "
                                   f"nothing written (is the budget below 0.5/255, or the step size zero?)")
        remove_stale_temp_dirs(out)  # left by a run killed while writing; this run holds the output
        manifest = write_poisoned(
            out, train, poisoned, eps=eps, method=method, test=splits.test, overwrite=overwrite,
            l0_pixels=attack.l0_pixels(), protected=protected, selection=selection,
            manifest_extra={"seed": seed, "preset": preset, "config": result.info.get("config", {}),
                            "history": result.info.get("history", []), "data": str(splits.name),
                            "subset": subset, "timings": {"generate_s": round(gen_s, 2)},
                            "resumed_from_epoch": result.info.get("resumed_from_epoch", 0)})
        shutil.rmtree(work, ignore_errors=True)
    return manifest


LOCK_NAME = ".lock"


def is_partial_dir(work: Path) -> bool:
    """True when ``work`` holds nothing but a generation checkpoint (and its temporary
    files and lock): the only kind of ``OUT.partial`` that ``overwrite`` may remove."""
    return work.is_dir() and not work.is_symlink() and all(
        p.name in ("checkpoint.pt", LOCK_NAME) or (p.name.startswith(".checkpoint.pt.") and p.name.endswith(".tmp"))
        for p in work.iterdir())


class GenerationDiverged(UnlearnableError):
    """The attack's loss or perturbation became NaN or infinite."""


def check_generation(result, method: str) -> None:
    """Refuse a generation whose perturbation or recorded losses are not finite numbers."""
    if not bool(torch.isfinite(result.delta).all()):
        raise GenerationDiverged(f"{method}: the perturbation became NaN or infinite (the generation diverged; "
                                 f"try a smaller learning rate or step size); nothing written")
    for i, entry in enumerate(result.info.get("history", [])):
        for key, value in (entry.items() if isinstance(entry, dict) else ()):
            if isinstance(value, float) and not math.isfinite(value):
                raise GenerationDiverged(f"{method}: {key} became {value} at history entry {i + 1} (the "
                                         f"generation diverged; try a smaller learning rate); nothing written")
