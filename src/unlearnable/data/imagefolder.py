"""ImageFolder trees: one sub-folder per class, images read with Pillow.

``ROOT/train/<class>/*`` and ``ROOT/test/<class>/*`` give both splits; a bare
``ROOT/<class>/*`` gives a training split only. All images must share one size; they are
converted to RGB, or kept grey when every image of the tree is grey.

This module also holds the image reading that every part of the package shares
(``unlearnable protect`` included): :func:`open_image` refuses an image with more pixels
than Pillow's ``Image.MAX_IMAGE_PIXELS`` (a possible decompression bomb; Pillow itself
only warns between 1x and 2x that limit), and :func:`to_uint8_array` is the one
conversion to 8-bit pixels, where 16-bit grey (modes ``I;16*`` and ``I``) becomes the
nearest 8-bit level, ``round(v / 257)``, instead of being clipped.
"""

from __future__ import annotations

import contextlib
import os
import re
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import UnlearnableError
from .dataset import DataSplits, ImageDataset

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}


class ImageTooLarge(UnlearnableError):
    """An image with more pixels than ``Image.MAX_IMAGE_PIXELS`` (a possible decompression
    bomb). ``reason`` is the message without the file name."""

    def __init__(self, path, pixels: int | None, limit: int | None):
        count = f"{pixels} pixels, " if pixels is not None else ""
        self.reason = f"image too large ({count}limit {limit})"
        super().__init__(f"{path}: {self.reason}")


def _too_large(path, err: BaseException) -> ImageTooLarge:
    m = re.search(r"\((\d+) pixels\)", str(err))
    return ImageTooLarge(path, int(m.group(1)) if m else None, Image.MAX_IMAGE_PIXELS)


@contextlib.contextmanager
def open_image(path: str | os.PathLike):
    """``Image.open(path)`` as a context manager, with Pillow's decompression-bomb warning
    (more than ``MAX_IMAGE_PIXELS``) and error (more than twice that) both raised as
    :class:`ImageTooLarge`, at opening and while decoding inside the block. Other errors
    pass through unchanged."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            with Image.open(path) as im:
                limit = Image.MAX_IMAGE_PIXELS
                if limit is not None and im.width * im.height > limit:  # formats that skip Pillow's check
                    raise ImageTooLarge(path, im.width * im.height, limit)
                yield im
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
            raise _too_large(path, e) from None


def is_grey_mode(mode: str) -> bool:
    """Grey modes without alpha: bilevel, 8-bit and 16-bit/32-bit integer grey."""
    return mode in ("L", "1", "I") or mode.startswith("I;16")


def grey16_to_uint8(im: Image.Image) -> np.ndarray:
    """uint8 (H, W) of a 16-bit grey image (modes ``I;16*``, ``I``): the nearest 8-bit level
    ``round(v / 257)`` (65535 -> 255, 257 -> 1; v / 257 never ends in .5 for integers).
    Raises ValueError for ``I`` values outside 0..65535."""
    v = np.asarray(im).astype(np.int64)
    if v.size and (v.min() < 0 or v.max() > 65535):
        raise ValueError(f"unsupported mode {im.mode} with values outside 0..65535")
    return ((v * 2 + 257) // 514).astype(np.uint8)


def to_uint8_array(im: Image.Image, mode: str) -> np.ndarray:
    """uint8 pixels of ``im`` in ``mode`` ("L": (H, W), "RGB": (H, W, 3)). 16-bit grey is
    scaled (see :func:`grey16_to_uint8`), not clipped as Pillow's ``convert`` does; float
    images (mode ``F``) are refused (ValueError), as ``unlearnable protect`` refuses them."""
    if mode not in ("L", "RGB"):
        raise ValueError(f"to_uint8_array: mode must be L or RGB, not {mode}")
    if im.mode == "I" or im.mode.startswith("I;16"):
        grey = grey16_to_uint8(im)
        return grey if mode == "L" else np.repeat(grey[..., None], 3, axis=-1)
    if im.mode == "F":
        raise ValueError("unsupported image mode F (32-bit floating point)")
    return np.asarray(im if im.mode == mode else im.convert(mode), dtype=np.uint8)


def list_class_folders(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def read_image(path: Path) -> Image.Image:
    """Open and fully decode an image (so truncation is caught here), EXIF orientation applied.
    An image over Pillow's pixel limit raises :class:`ImageTooLarge` naming the file."""
    try:
        with open_image(path) as im:
            im.load()
            return ImageOps.exif_transpose(im)
    except UnlearnableError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError) as e:
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
    grey = all(is_grey_mode(im.mode) for im in images)
    mode = "L" if grey else "RGB"
    size = images[0].size
    arrays = []
    for (p, _), im in zip(files, images):
        if im.size != size:
            raise UnlearnableError(f"mismatched image sizes: {files[0][0]} is {size[0]}x{size[1]} "
                                   f"but {p} is {im.size[0]}x{im.size[1]}")
        try:
            arrays.append(to_uint8_array(im, mode))
        except ValueError as e:
            raise UnlearnableError(f"cannot read image {p}: {e}") from None
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
