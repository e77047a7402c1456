"""The on-disk format of a protected (poisoned) dataset, written losslessly.

    DIR/manifest.json          method, config, seed, versions, timings, budget, counts
    DIR/train/<class>/<i>.png  the protected training images, one PNG each (i = row)
    DIR/perturbation.npz       delta (int16, N x H x W x C, 1/255 units), labels,
                               source_indices (rows of the source training split)
    DIR/test.npz               the clean test split (x_test, y_test), when there is one

When only some images are protected (``unlearnable poison --classes/--ratio``), the
manifest's ``selection`` holds ``protected_classes``, ``ratio``, ``seed``, ``count``,
``perturbed_indices`` (rows of this training set) and ``perturbed_source_indices`` (rows
of the source split); every other image has a zero perturbation and is written
unchanged. Both writer and reader check this.

``poisoned = clean + delta`` holds exactly on uint8 values, so the clean images are
recovered from the PNGs and the perturbation. Perturbations are rounded to the nearest
uint8 level (never truncated) and the budget is checked on those integers before
anything is written; the directory appears only when complete.
"""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..errors import UnlearnableError
from ..fsutil import load_npz, prepare_output_dir, replace_dir, save_npz, write_json
from ..progress import bar
from .dataset import ImageDataset

FORMAT_VERSION = 1


def budget_levels(eps: float) -> int:
    """The largest integer perturbation (in 1/255 units) allowed by an L-inf budget ``eps``."""
    return int(np.floor(eps * 255.0 + 1e-6))


def quantize(clean: np.ndarray, delta: np.ndarray | torch.Tensor, eps: float) -> np.ndarray:
    """Round ``clean + delta`` to uint8 and project it back into the budget.

    ``clean`` is uint8 (N, H, W, C); ``delta`` a float perturbation in [0, 1] pixel units,
    same shape (or NCHW as a tensor). Rounding to the nearest level can move a value by
    half a level past a non-integer budget; those values are pulled back to the largest
    allowed integer, so the result always satisfies the budget.
    """
    if isinstance(delta, torch.Tensor):
        delta = delta.detach().cpu()
        if delta.ndim == 4 and delta.shape[1] in (1, 3) and delta.shape[-1] not in (1, 3):
            delta = delta.permute(0, 2, 3, 1)
        delta = delta.double().numpy()
    delta = np.asarray(delta, dtype=np.float64)
    if delta.shape != clean.shape:
        raise UnlearnableError(f"perturbation shape {delta.shape} does not match images {clean.shape}")
    base = clean.astype(np.int16)
    poisoned = np.rint(np.clip(base + delta * 255.0, 0, 255)).astype(np.int16)
    k = budget_levels(eps)
    poisoned = np.clip(poisoned, base - k, base + k)
    return np.clip(poisoned, 0, 255).astype(np.uint8)


def _safe_folder(label: int, name: str) -> str:
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "class"
    return f"{label:03d}-{slug[:60]}"


def package_versions() -> dict:
    from .. import __version__
    return {"unlearnable": __version__, "python": platform.python_version(),
            "torch": torch.__version__, "numpy": np.__version__}


def l0_counts(delta: np.ndarray) -> np.ndarray:
    """Changed pixel positions per image (a pixel counts once whatever its channels)."""
    return np.any(delta != 0, axis=3).reshape(len(delta), -1).sum(axis=1)


def write_poisoned(out: str | os.PathLike, clean: ImageDataset, poisoned_images: np.ndarray, *,
                   eps: float, method: str, test: ImageDataset | None = None,
                   manifest_extra: dict | None = None, overwrite: bool = False,
                   l0_pixels: int | None = None, protected: np.ndarray | None = None,
                   selection: dict | None = None) -> dict:
    """Write a protected dataset to ``out`` and return its manifest.

    Refuses (raises) when any written pixel differs from the clean one by more than the
    budget, when shapes disagree, or when ``out`` is not empty and ``overwrite`` is off.
    ``l0_pixels`` declares an L0 threat model: each image may differ from the clean one
    in at most that many pixel positions. It is checked in addition to the L-inf budget
    ``eps`` (an L0 attack passes ``eps=1`` for an unbounded change), and the manifest
    records ``norm: "l0"``, ``l0_pixels`` and the measured ``l0_max``.

    ``protected`` (bool, one per image) marks the images selected for protection; every
    other image must equal its clean original exactly, and the selected ones obey the
    budget like all images. ``selection`` is recorded with it as the manifest's
    ``selection`` (``protected_classes``, when given, must hold every selected label),
    completed with the count and the selected rows (see the module docstring).
    """
    out = prepare_output_dir(out, overwrite)
    if poisoned_images.dtype != np.uint8 or poisoned_images.shape != clean.images.shape:
        raise UnlearnableError(f"poisoned images must be uint8 {clean.images.shape}, got "
                               f"{poisoned_images.dtype} {poisoned_images.shape}")
    if not (0 < eps <= 1):
        raise UnlearnableError(f"eps must be in (0, 1], got {eps}")
    delta = poisoned_images.astype(np.int16) - clean.images.astype(np.int16)
    linf = int(np.abs(delta).max()) if delta.size else 0
    limit = budget_levels(eps)
    if linf > limit:
        raise UnlearnableError(f"refusing to write: perturbation reaches {linf}/255, budget is {limit}/255")
    l0_max = None
    if l0_pixels is not None:
        if int(l0_pixels) != l0_pixels or l0_pixels < 1:
            raise UnlearnableError(f"l0_pixels must be a positive integer, got {l0_pixels}")
        l0_max = int(l0_counts(delta).max()) if delta.size else 0
        if l0_max > l0_pixels:
            raise UnlearnableError(f"refusing to write: perturbation changes {l0_max} pixels of an image, "
                                   f"L0 budget is {l0_pixels}")
    if protected is not None:
        selection = _check_selection(np.asarray(protected), dict(selection or {}), clean, delta)

    t0 = time.time()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.writing-", dir=out.parent))
    try:
        folders = [_safe_folder(i, n) for i, n in enumerate(clean.class_names)]
        for f in folders:
            (tmp / "train" / f).mkdir(parents=True)
        width = max(5, len(str(len(clean))))
        mode = "L" if clean.channels == 1 else "RGB"
        files = []
        for i in bar(range(len(clean)), desc="write PNGs", unit="img"):
            rel = f"train/{folders[clean.labels[i]]}/{i:0{width}d}.png"
            img = poisoned_images[i, :, :, 0] if mode == "L" else poisoned_images[i]
            Image.fromarray(img, mode=mode).save(tmp / rel, format="PNG", compress_level=6)
            files.append(rel)
        save_npz(tmp / "perturbation.npz", delta=delta, labels=clean.labels,
                 source_indices=clean.indices)
        if test is not None:
            save_npz(tmp / "test.npz", x_test=test.images, y_test=test.labels)
        counts = {"train": len(clean), "test": 0 if test is None else len(test),
                  "per_class": np.bincount(clean.labels, minlength=clean.num_classes).tolist(),
                  "perturbed": int(np.any(delta != 0, axis=(1, 2, 3)).sum())}
        manifest = {
            "format": "unlearnable-poisoned", "format_version": FORMAT_VERSION,
            "method": method, "eps_255": round(eps * 255.0, 6), "linf_255": linf,
            "norm": "linf" if l0_pixels is None else "l0", "image_shape": list(clean.images.shape[1:]),
            "class_names": clean.class_names, "class_folders": folders,
            "source": clean.source, "counts": counts, "versions": package_versions(),
            "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        if l0_pixels is not None:
            manifest.update(l0_pixels=int(l0_pixels), l0_max=l0_max)
        if selection is not None:
            manifest["selection"] = selection
        manifest.update(manifest_extra or {})
        manifest.setdefault("timings", {})["write_s"] = round(time.time() - t0, 3)
        write_json(tmp / "manifest.json", manifest)
        replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest


def _check_selection(protected: np.ndarray, selection: dict, clean: ImageDataset, delta: np.ndarray) -> dict:
    if protected.dtype != bool or protected.shape != (len(clean),):
        raise UnlearnableError(f"protected must be a boolean mask of {len(clean)} images, got "
                               f"{protected.dtype} {protected.shape}")
    changed = np.flatnonzero(np.any(delta != 0, axis=(1, 2, 3)) & ~protected)
    if changed.size:
        raise UnlearnableError(f"refusing to write: {changed.size} image(s) outside the protected selection differ "
                               f"from their originals (first: row {changed[0]})")
    classes = selection.get("protected_classes")
    if classes is not None and not np.isin(clean.labels[protected], classes).all():
        raise UnlearnableError(f"refusing to write: a protected image is outside protected_classes {classes}")
    rows = np.flatnonzero(protected)
    return {**selection, "count": int(rows.size), "perturbed_indices": rows.tolist(),
            "perturbed_source_indices": clean.indices[rows].tolist()}


def read_manifest(path: str | os.PathLike) -> dict:
    """The manifest of a protected dataset directory (no images read)."""
    path = Path(path)
    if not is_poisoned_dir(path):
        raise UnlearnableError(f"{path}: not a protected dataset (no manifest.json / perturbation.npz)")
    try:
        return json.loads((path / "manifest.json").read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise UnlearnableError(f"{path}/manifest.json: {e}") from None


def selection_mask(manifest: dict, n: int) -> np.ndarray:
    """The images selected for protection (bool, one per training image); all of them
    when the manifest has no ``selection`` (the whole training set was protected)."""
    sel = manifest.get("selection")
    mask = np.zeros(n, bool) if sel else np.ones(n, bool)
    if sel:
        rows = np.asarray(sel.get("perturbed_indices", []), dtype=np.int64)
        if rows.size and (rows.min() < 0 or rows.max() >= n):
            raise UnlearnableError(f"manifest selection: perturbed_indices out of range 0..{n - 1}")
        mask[rows] = True
    return mask


@dataclass
class PoisonedDataset:
    clean: ImageDataset
    poisoned: ImageDataset
    delta: np.ndarray  # int16, 1/255 units
    test: ImageDataset | None
    manifest: dict
    path: Path

    @property
    def perturbed_mask(self) -> np.ndarray:
        """bool (N,): the training images selected for protection (all, for a full run).
        A selected image can still have a zero perturbation (rounding), never the reverse."""
        return selection_mask(self.manifest, len(self.delta))

    @property
    def protected_classes(self) -> list[int] | None:
        """Class indices protected by ``--classes``; None when protection is not per class."""
        sel = self.manifest.get("selection") or {}
        return sel.get("protected_classes")


def is_poisoned_dir(path: Path) -> bool:
    return (Path(path) / "manifest.json").is_file() and (Path(path) / "perturbation.npz").is_file()


def read_poisoned(path: str | os.PathLike) -> PoisonedDataset:
    """Read a directory written by :func:`write_poisoned`, checking it against its manifest."""
    path = Path(path)
    manifest = read_manifest(path)
    arrays = load_npz(path / "perturbation.npz")
    delta, labels = arrays["delta"], arrays["labels"]
    names, folders = manifest["class_names"], manifest["class_folders"]
    mode = "L" if manifest["image_shape"][-1] == 1 else "RGB"
    width = max(5, len(str(len(labels))))
    imgs = np.empty(delta.shape, dtype=np.uint8)
    for i in bar(range(len(labels)), desc="read PNGs", unit="img"):
        p = path / "train" / folders[labels[i]] / f"{i:0{width}d}.png"
        try:
            with Image.open(p) as im:
                a = np.asarray(im.convert(mode), dtype=np.uint8)
        except (OSError, SyntaxError, ValueError) as e:
            raise UnlearnableError(f"cannot read image {p}: {e}") from None
        if a.shape[:2] != delta.shape[1:3]:
            raise UnlearnableError(f"{p}: size {a.shape[:2]} differs from the manifest's {delta.shape[1:3]}")
        imgs[i] = a.reshape(delta.shape[1:])
    clean = imgs.astype(np.int16) - delta
    if clean.min() < 0 or clean.max() > 255:
        raise UnlearnableError(f"{path}: PNGs and perturbation.npz do not match (clean values out of range)")
    linf = int(np.abs(delta).max()) if delta.size else 0
    if linf != manifest.get("linf_255"):
        raise UnlearnableError(f"{path}: perturbation L-inf {linf} differs from the manifest's {manifest.get('linf_255')}")
    if manifest.get("norm") == "l0" and delta.size and int(l0_counts(delta).max()) > manifest["l0_pixels"]:
        raise UnlearnableError(f"{path}: perturbation changes more pixels than the manifest's l0_pixels")
    if manifest.get("selection"):
        outside = np.any(delta != 0, axis=(1, 2, 3)) & ~selection_mask(manifest, len(labels))
        if outside.any():
            raise UnlearnableError(f"{path}: image row {np.flatnonzero(outside)[0]} is perturbed but not in the "
                                   f"manifest's perturbed_indices")
    src = manifest.get("source", str(path))
    indices = arrays.get("source_indices")
    clean_ds = ImageDataset(clean.astype(np.uint8), labels, names, source=src, indices=indices)
    poisoned_ds = ImageDataset(imgs, labels, names, source=f"poisoned:{path}", indices=indices)
    test = None
    if (path / "test.npz").is_file():
        t = load_npz(path / "test.npz")
        test = ImageDataset(t["x_test"], t["y_test"], names, source=f"{src}:test")
    return PoisonedDataset(clean_ds, poisoned_ds, delta, test, manifest, path)
