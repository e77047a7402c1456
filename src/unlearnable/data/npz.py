"""``.npz`` datasets: x_train, y_train, x_test, y_test (uint8 NHWC or NHW; integer labels),
optional class_names. Read without pickle.

Labels must have an integer dtype (float labels are refused, even integer-valued ones
such as 1.0, as are NaN and bool) and be non-negative. With ``class_names`` (a 1-D array
of K distinct names) every label must lie in 0..K-1. Without it there are K = max label
+ 1 classes, named "0".."K-1"; K may exceed :data:`MAX_SPARSE_CLASSES` only when every
class 0..K-1 has at least one image in y_train or y_test, so a stray large label cannot
create thousands of empty classes.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..errors import UnlearnableError
from .dataset import DataSplits, ImageDataset

#: Without class_names, more classes than this need every one of them to have an image.
MAX_SPARSE_CLASSES = 1000


def read_npz(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Every array of the ``.npz`` file ``path``, read without pickle. A file that is not a
    readable npz (truncated, corrupt, a bare ``.npy``, object arrays) raises
    :class:`UnlearnableError` naming it."""
    path = Path(path)
    try:
        z = np.load(path, allow_pickle=False)
    except Exception as e:  # noqa: BLE001 - zipfile, zlib, numpy's header parser: all mean a bad file
        raise UnlearnableError(f"cannot read {path} as npz without pickle: {_reason(e)}") from None
    if not isinstance(z, np.lib.npyio.NpzFile):
        raise UnlearnableError(f"cannot read {path} as npz: it holds a single .npy array, not an .npz "
                               f"archive of named arrays")
    try:
        with z:
            return {k: z[k] for k in z.files}
    except Exception as e:  # noqa: BLE001 - a corrupt or truncated member, an object array
        raise UnlearnableError(f"cannot read {path} as npz without pickle: {_reason(e)}") from None


def _reason(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def check_labels(path, key: str, y: np.ndarray) -> np.ndarray:
    """``y`` as int64 after refusing non-integer dtypes and negative values (one-line errors)."""
    y = np.asarray(y)
    if y.ndim != 1:
        raise UnlearnableError(f"{path}: '{key}' must be a 1-D array of labels, got shape {y.shape}")
    if y.size and not np.issubdtype(y.dtype, np.integer):
        if np.issubdtype(y.dtype, np.floating):
            if not np.all(np.isfinite(y)):
                bad = "NaN or infinite values"
            elif np.any(y != np.round(y)):
                bad = "non-integer values"
            else:
                raise UnlearnableError(f"{path}: '{key}' has {y.dtype} labels; labels must have an integer dtype "
                                       f"(float labels are refused, even integer-valued ones such as 1.0: "
                                       f"convert them with y.astype(np.int64))")
            raise UnlearnableError(f"{path}: '{key}' has {y.dtype} labels with {bad}; labels must be "
                                   f"integers 0..K-1 with an integer dtype")
        raise UnlearnableError(f"{path}: '{key}' labels must have an integer dtype, got {y.dtype}")
    if y.size and y.min() < 0:
        raise UnlearnableError(f"{path}: '{key}' labels out of range: found negative label {int(y.min())}; "
                               f"labels must be 0..K-1")
    if y.size and int(y.max()) >= 2 ** 31:
        raise UnlearnableError(f"{path}: '{key}' has label {int(y.max())}, far above any number of classes; "
                               f"labels must be 0..K-1")
    return y.astype(np.int64)


def _class_names(path, arrays: dict, ys: dict[str, np.ndarray]) -> list[str]:
    top = max((int(y.max()) for y in ys.values() if y.size), default=-1)
    if "class_names" in arrays:
        raw = arrays["class_names"]
        if raw.ndim != 1 or raw.size == 0:
            raise UnlearnableError(f"{path}: 'class_names' must be a non-empty 1-D array, got shape {raw.shape}")
        names = [str(s) for s in raw.tolist()]
        if len(set(names)) != len(names):
            dup = next(n for n in names if names.count(n) > 1)
            raise UnlearnableError(f"{path}: 'class_names' has the name {dup!r} twice")
        if top >= len(names):
            key = next(k for k, y in ys.items() if y.size and int(y.max()) == top)
            raise UnlearnableError(f"{path}: '{key}' labels out of range: found label {top}, but class_names "
                                   f"has {len(names)} names, so labels must be 0..{len(names) - 1}")
        return names
    k = top + 1
    if k > MAX_SPARSE_CLASSES:
        present = np.unique(np.concatenate([y for y in ys.values()]))
        if present.size != k:
            raise UnlearnableError(
                f"{path}: labels out of range: they go up to {top} but only {present.size} of those {k} classes "
                f"have images; without "
                f"'class_names', labels must be 0..K-1 with K <= {MAX_SPARSE_CLASSES}, or every class 0..K-1 "
                f"must have an image (add 'class_names' or renumber the labels)")
    return [str(i) for i in range(k)]


def load_npz_dataset(path: str | os.PathLike) -> DataSplits:
    path = Path(path)
    arrays = read_npz(path)
    for key in ("x_train", "y_train"):
        if key not in arrays:
            raise UnlearnableError(f"{path}: missing array '{key}' (have {sorted(arrays)})")
    if "x_test" in arrays and "y_test" not in arrays:
        raise UnlearnableError(f"{path}: has 'x_test' but no 'y_test'")
    if "y_test" in arrays and "x_test" not in arrays:
        raise UnlearnableError(f"{path}: has 'y_test' but no 'x_test'")
    x_train = arrays["x_train"]
    if x_train.ndim == 0 or x_train.shape[0] == 0:
        raise UnlearnableError(f"{path}: no training images ('x_train' has shape {x_train.shape})")
    if "x_test" in arrays and (arrays["x_test"].ndim == 0 or arrays["x_test"].shape[0] == 0):
        raise UnlearnableError(f"{path}: 'x_test' holds no images (shape {arrays['x_test'].shape}); "
                               f"leave out x_test and y_test for no test split")
    ys = {k: check_labels(path, k, arrays[k]) for k in ("y_train", "y_test") if k in arrays}
    names = _class_names(path, arrays, ys)
    train = ImageDataset(x_train, ys["y_train"], names, source=f"npz:{path}:train")
    test = None
    if "x_test" in arrays:
        test = ImageDataset(arrays["x_test"], ys["y_test"], names, source=f"npz:{path}:test")
    splits = DataSplits(train, test, name=f"npz:{path}")
    splits.check_compatible()
    return splits
