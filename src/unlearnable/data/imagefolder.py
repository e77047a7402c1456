"""ImageFolder trees: one sub-folder per class, images read with Pillow.

``ROOT/train/<class>/*`` and ``ROOT/test/<class>/*`` give both splits; a bare
``ROOT/<class>/*`` gives a training split only. All images must share one size; they are
converted to RGB, or kept grey when every image of the tree is grey.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import UnlearnableError
from .dataset import DataSplits, ImageDataset

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}


def list_class_folders(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def read_image(path: Path) -> Image.Image:
    """Open and fully decode an image (so truncation is caught here), EXIF orientation applied."""
    try:
        with Image.open(path) as im:
            im.load()
            return ImageOps.exif_transpose(im)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise UnlearnableError(f"cannot read image {path}: {e}") from None


def _read_split(root: Path, class_names: list[str] | None, source: str) -> ImageDataset:
    names = class_names or list_class_folders(root)
    if not names:
        raise UnlearnableError(f"{root}: no class sub-folders found")
    files: list[tuple[Path, int]] = []
    for label, name in enumerate(names):
        folder = root / name
        if folder.is_dir():
            files += [(p, label) for p in sorted(folder.rglob("*"))
                      if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
    if not files:
        raise UnlearnableError(f"{root}: no images found in the class sub-folders")
    images = [read_image(p) for p, _ in files]
    grey = all(im.mode in ("L", "1", "I;16", "I") for im in images)
    mode = "L" if grey else "RGB"
    size = images[0].size
    arrays = []
    for (p, _), im in zip(files, images):
        if im.size != size:
            raise UnlearnableError(f"mismatched image sizes: {files[0][0]} is {size[0]}x{size[1]} "
                                   f"but {p} is {im.size[0]}x{im.size[1]}")
        arrays.append(np.asarray(im.convert(mode), dtype=np.uint8))
    x = np.stack(arrays)
    y = np.asarray([lab for _, lab in files], dtype=np.int64)
    return ImageDataset(x, y, names, source=source)


def load_image_folder(root: str | os.PathLike) -> DataSplits:
    root = Path(root)
    if (root / "train").is_dir():
        train = _read_split(root / "train", None, f"imagefolder:{root}:train")
        test_dir = next((root / d for d in ("test", "val") if (root / d).is_dir()), None)
        test = None
        if test_dir is not None:
            missing = set(list_class_folders(test_dir)) - set(train.class_names)
            if missing:
                raise UnlearnableError(f"{test_dir}: classes not in train/: {sorted(missing)}")
            test = _read_split(test_dir, train.class_names, f"imagefolder:{root}:{test_dir.name}")
        splits = DataSplits(train, test, name=f"imagefolder:{root}")
    else:
        splits = DataSplits(_read_split(root, None, f"imagefolder:{root}"), None, name=f"imagefolder:{root}")
    if splits.test is not None and splits.test.channels != splits.train.channels:
        # One split grey and the other colour: bring both to RGB.
        for ds in (splits.train, splits.test):
            if ds.channels == 1:
                ds.images = np.repeat(ds.images, 3, axis=-1)
    splits.check_compatible()
    return splits
