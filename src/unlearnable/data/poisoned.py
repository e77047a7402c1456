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

One module on purpose (about 420 lines): the writer, the reader and the manifest checks
are the two sides of one format, and keeping them together keeps them from drifting.
"""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..errors import UnlearnableError
from ..fsutil import make_temp_dir, prepare_output_dir, replace_dir, save_npz, write_json
from ..progress import bar
from .dataset import ImageDataset
from .imagefolder import open_image, to_uint8_array
from .npz import read_npz

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
    tmp = make_temp_dir(out)
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
    """The manifest of a protected dataset directory (no images read), checked for the keys
    and types that reading relies on (see :func:`check_manifest`)."""
    path = Path(path)
    if not is_poisoned_dir(path):
        raise UnlearnableError(f"{path}: not a protected dataset (no manifest.json / perturbation.npz)")
    where = path / "manifest.json"
    try:
        manifest = json.loads(where.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as e:  # ValueError: JSON syntax, bad UTF-8
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UnlearnableError(f"{where}: not readable JSON ({reason})") from None
    return check_manifest(manifest, where)


def _kind(v) -> str:
    return "null" if v is None else type(v).__name__


def _is_int(v) -> bool:
    return type(v) is int  # bool is not a count


def _is_number(v) -> bool:
    return type(v) in (int, float) and np.isfinite(v)


def _safe_component(name) -> bool:
    return isinstance(name, str) and name not in ("", ".", "..") and not any(c in name for c in "/\\\x00")


def check_manifest(m, where) -> dict:
    """``m`` if it is a manifest this version can read, else an :class:`UnlearnableError`
    naming ``where`` and the first problem: ``format`` and ``format_version``; ``class_names``
    (non-empty list of strings) and ``class_folders`` (as many plain folder names);
    ``image_shape`` [H, W, 1 or 3]; ``eps_255`` and ``linf_255`` (0..255); ``counts`` with
    ``train`` (positive) and ``test``; ``norm`` with ``l0_pixels`` for L0; and a
    ``selection``, when present, with integer ``perturbed_indices``."""
    def bad(msg):
        raise UnlearnableError(f"{where}: {msg}")

    def need(key):
        if key not in m:
            bad(f"missing '{key}'")
        return m[key]

    if not isinstance(m, dict):
        bad(f"must hold a JSON object, found {_kind(m)}")
    if need("format") != "unlearnable-poisoned":
        bad(f"'format' is {m['format']!r}, expected 'unlearnable-poisoned'")
    version = need("format_version")
    if not _is_int(version) or not 1 <= version <= FORMAT_VERSION:
        bad(f"unsupported format_version {version!r} (this version reads 1..{FORMAT_VERSION})")
    names = need("class_names")
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        bad(f"'class_names' must be a non-empty list of strings, found {_kind(names)}")
    folders = need("class_folders")
    if not isinstance(folders, list) or len(folders) != len(names) or not all(map(_safe_component, folders)):
        bad(f"'class_folders' must be a list of {len(names)} plain folder names (one per class name)")
    shape = need("image_shape")
    if (not isinstance(shape, list) or len(shape) != 3 or not all(_is_int(v) and v > 0 for v in shape)
            or shape[2] not in (1, 3)):
        bad(f"'image_shape' must be [height, width, 1 or 3], found {shape!r}")
    for key in ("eps_255", "linf_255"):
        v = need(key)
        if not _is_number(v) or not 0 <= v <= 255 or (key == "linf_255" and not _is_int(v)):
            bad(f"'{key}' must be a{'n integer' if key == 'linf_255' else ' number'} in 0..255, found {v!r}")
    norm = m.get("norm", "linf")
    if norm not in ("linf", "l0"):
        bad(f"'norm' must be 'linf' or 'l0', found {norm!r}")
    if norm == "l0" and not (_is_int(m.get("l0_pixels")) and m["l0_pixels"] >= 1):
        bad(f"norm 'l0' needs a positive integer 'l0_pixels', found {m.get('l0_pixels')!r}")
    counts = need("counts")
    if not isinstance(counts, dict):
        bad(f"'counts' must be an object, found {_kind(counts)}")
    for key in ("train", "test"):
        v = counts.get(key)
        if not _is_int(v) or v < 0:
            bad(f"'counts' needs a non-negative integer '{key}', found {v!r}")
    if counts["train"] == 0:
        bad("no training images (counts.train is 0)")
    if "source" in m and not isinstance(m["source"], str):
        bad(f"'source' must be a string, found {_kind(m['source'])}")
    sel = m.get("selection")
    if sel:
        if not isinstance(sel, dict):
            bad(f"'selection' must be an object, found {_kind(sel)}")
        rows = sel.get("perturbed_indices")
        if not isinstance(rows, list) or not all(_is_int(v) for v in rows):
            bad(f"'selection' needs 'perturbed_indices', a list of integers, found {_kind(rows)}")
        if rows and (min(rows) < 0 or max(rows) >= counts["train"]):
            bad(f"selection: perturbed_indices out of range 0..{counts['train'] - 1}")
        classes = sel.get("protected_classes")
        if classes is not None and (not isinstance(classes, list)
                                    or not all(_is_int(c) and 0 <= c < len(names) for c in classes)):
            bad(f"selection: 'protected_classes' must be a list of class indices 0..{len(names) - 1}")
    return m


def selection_mask(manifest: dict, n: int) -> np.ndarray:
    """The images selected for protection (bool, one per training image); all of them
    when the manifest has no ``selection`` (the whole training set was protected)."""
    sel = manifest.get("selection")
    mask = np.zeros(n, bool) if sel else np.ones(n, bool)
    if sel:
        raw = sel.get("perturbed_indices", []) if isinstance(sel, dict) else None
        if not isinstance(raw, list) or not all(type(v) is int for v in raw):
            raise UnlearnableError("manifest selection: perturbed_indices must be a list of integers")
        rows = np.asarray(raw, dtype=np.int64)
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
    """A protected dataset: its manifest and perturbation, or a manifest that declares the
    format (a damaged set is then reported as one, not read as a plain image folder)."""
    path = Path(path)
    if not (path / "manifest.json").is_file():
        return False
    if (path / "perturbation.npz").is_file():
        return True
    try:
        return json.loads((path / "manifest.json").read_text()).get("format") == "unlearnable-poisoned"
    except (OSError, ValueError, AttributeError, RecursionError):
        return False


def _labels_array(where: Path, key: str, y: np.ndarray, n: int, n_classes: int) -> np.ndarray:
    if y.dtype.kind not in "iu" or y.shape != (n,):
        raise UnlearnableError(f"{where}: '{key}' must be {n} integer labels, found {y.dtype} {y.shape}")
    if n and (y.min() < 0 or y.max() >= n_classes):
        raise UnlearnableError(f"{where}: '{key}' out of range 0..{n_classes - 1}: found {int(y.min())}..{int(y.max())}")
    return y.astype(np.int64)


def _read_png(p: Path, mode: str) -> np.ndarray:
    try:
        with open_image(p) as im:
            return to_uint8_array(im, mode)
    except UnlearnableError:
        raise
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        raise UnlearnableError(f"cannot read image {p}: {e}") from None


def read_poisoned(path: str | os.PathLike) -> PoisonedDataset:
    """Read a directory written by :func:`write_poisoned`, checking it against its manifest.

    Every problem (a manifest missing a key, a truncated or object-array npz, arrays of
    the wrong shape or dtype, a PNG that does not match) is an :class:`UnlearnableError`
    naming the file; nothing is unpickled."""
    path = Path(path)
    manifest = read_manifest(path)
    names, folders = manifest["class_names"], manifest["class_folders"]
    n, shape = manifest["counts"]["train"], tuple(manifest["image_shape"])
    pert = path / "perturbation.npz"
    arrays = read_npz(pert)
    for key in ("delta", "labels"):
        if key not in arrays:
            raise UnlearnableError(f"{pert}: missing array '{key}' (have {sorted(arrays)})")
    delta = arrays["delta"]
    if delta.dtype != np.int16 or delta.shape != (n, *shape):
        raise UnlearnableError(f"{pert}: 'delta' must be int16 of shape {(n, *shape)} (counts.train x image_shape "
                               f"in the manifest), found {delta.dtype} {delta.shape}")
    labels = _labels_array(pert, "labels", arrays["labels"], n, len(names))
    indices = arrays.get("source_indices")
    if indices is not None:
        if indices.dtype.kind not in "iu" or indices.shape != (n,) or (n and indices.min() < 0):
            raise UnlearnableError(f"{pert}: 'source_indices' must be {n} non-negative integers, found "
                                   f"{indices.dtype} {indices.shape}")
        indices = indices.astype(np.int64)
    linf = int(np.abs(delta.astype(np.int32)).max()) if delta.size else 0
    if linf != manifest["linf_255"]:
        raise UnlearnableError(f"{path}: perturbation L-inf {linf} differs from the manifest's {manifest['linf_255']}")
    if manifest.get("norm") == "l0" and delta.size and int(l0_counts(delta).max()) > manifest["l0_pixels"]:
        raise UnlearnableError(f"{path}: perturbation changes more pixels than the manifest's l0_pixels")
    if manifest.get("selection"):
        outside = np.any(delta != 0, axis=(1, 2, 3)) & ~selection_mask(manifest, n)
        if outside.any():
            raise UnlearnableError(f"{path}: image row {np.flatnonzero(outside)[0]} is perturbed but not in the "
                                   f"manifest's perturbed_indices")
    mode = "L" if shape[-1] == 1 else "RGB"
    width = max(5, len(str(n)))
    imgs = np.empty(delta.shape, dtype=np.uint8)
    for i in bar(range(n), desc="read PNGs", unit="img"):
        p = path / "train" / folders[labels[i]] / f"{i:0{width}d}.png"
        a = _read_png(p, mode)
        if a.shape[:2] != shape[:2]:
            raise UnlearnableError(f"{p}: size {a.shape[:2]} differs from the manifest's {shape[:2]}")
        imgs[i] = a.reshape(shape)
    clean = imgs.astype(np.int16) - delta
    if clean.min() < 0 or clean.max() > 255:
        raise UnlearnableError(f"{path}: PNGs and perturbation.npz do not match (clean values out of range)")
    src = manifest.get("source", str(path))
    clean_ds = ImageDataset(clean.astype(np.uint8), labels, names, source=src, indices=indices)
    poisoned_ds = ImageDataset(imgs, labels, names, source=f"poisoned:{path}", indices=indices)
    test = None
    test_path = path / "test.npz"
    if test_path.is_file():
        t = read_npz(test_path)
        for key in ("x_test", "y_test"):
            if key not in t:
                raise UnlearnableError(f"{test_path}: missing array '{key}' (have {sorted(t)})")
        x_test = t["x_test"]
        if x_test.dtype != np.uint8 or x_test.ndim != 4 or x_test.shape[1:] != shape:
            raise UnlearnableError(f"{test_path}: 'x_test' must be uint8 of shape (N, {', '.join(map(str, shape))}), "
                                   f"found {x_test.dtype} {x_test.shape}")
        y_test = _labels_array(test_path, "y_test", t["y_test"], len(x_test), len(names))
        test = ImageDataset(x_test, y_test, names, source=f"{src}:test")
    return PoisonedDataset(clean_ds, poisoned_ds, delta, test, manifest, path)
