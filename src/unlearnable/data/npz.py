"""``.npz`` datasets: x_train, y_train, x_test, y_test (uint8 NHWC or NHW; integer labels),
optional class_names. Read without pickle."""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import numpy as np

from ..errors import UnlearnableError
from .dataset import DataSplits, ImageDataset


def load_npz_dataset(path: str | os.PathLike) -> DataSplits:
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
        raise UnlearnableError(f"cannot read {path} as npz without pickle: {e}") from None
    for key in ("x_train", "y_train"):
        if key not in arrays:
            raise UnlearnableError(f"{path}: missing array '{key}' (have {sorted(arrays)})")
    y_all = [arrays["y_train"]] + ([arrays["y_test"]] if "y_test" in arrays else [])
    if "class_names" in arrays:
        names = [str(s) for s in arrays["class_names"].tolist()]
    else:
        top = max(int(np.max(y)) for y in y_all if np.size(y)) if any(np.size(y) for y in y_all) else 0
        names = [str(i) for i in range(top + 1)]
    train = ImageDataset(arrays["x_train"], arrays["y_train"], names, source=f"npz:{path}:train")
    test = None
    if "x_test" in arrays:
        if "y_test" not in arrays:
            raise UnlearnableError(f"{path}: has 'x_test' but no 'y_test'")
        test = ImageDataset(arrays["x_test"], arrays["y_test"], names, source=f"npz:{path}:test")
    splits = DataSplits(train, test, name=f"npz:{path}")
    splits.check_compatible()
    return splits
