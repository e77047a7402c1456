"""Reading a user's image for protection, and the pixel policy for each Pillow mode.

Every image is fully decoded (so truncation is caught here) and its EXIF orientation is
applied, so the output is upright and carries no orientation tag. The channels that
get a perturbation (``pixels``, grey or RGB) are separated from an alpha channel, which
is copied to the output unchanged:

==========================  ======================  ==========
input mode                  perturbed as            output
==========================  ======================  ==========
L                           L                       L
RGB                         RGB                     RGB
RGBA                        RGB (alpha kept)        RGBA
LA                          L (alpha kept)          LA
P, PA (palette)             RGB, or RGBA when the   RGB / RGBA
                            palette has             (a palette cannot carry
                            transparency            the perturbation)
1 (bilevel)                 L (0 / 255)             L
I;16*, I (16-bit grey)      L = round(v / 257)      L (8-bit)
CMYK, YCbCr, LAB, HSV,      RGB (Pillow's           RGB
RGBX                        conversion)
La, RGBa (premultiplied)    LA / RGBA               LA / RGBA
F (float), I beyond 16 bit  refused (unsupported)
==========================  ======================  ==========

The ICC profile is kept when the channels are kept (L, LA, RGB, RGBA inputs), so colours
display as before; all other metadata (EXIF, GPS, text chunks) is dropped.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from ..data.imagefolder import ImageTooLarge, grey16_to_uint8, open_image

# Pillow formats that it registers but cannot decode into a picture without extra
# handlers, or that are not pictures (video): such files are ignored, not reported.
_NOT_PICTURES = {"MPEG", "BUFR", "GRIB", "HDF5", "WMF"}
# Common image extensions that this Pillow cannot read: reported as skipped.
UNREADABLE_IMAGE_SUFFIXES = {".heic", ".heif", ".avif", ".jxl", ".svg", ".cr2", ".cr3", ".nef", ".arw", ".dng",
                             ".raw", ".orf", ".rw2", ".raf"}
_KEEP_ICC = {"L", "LA", "RGB", "RGBA"}


def readable_suffixes() -> set[str]:
    """Lower-case file suffixes of the formats this Pillow can open."""
    Image.init()
    return {ext.lower() for ext, fmt in Image.registered_extensions().items()
            if fmt in Image.OPEN and fmt not in _NOT_PICTURES}


class UnreadableImage(Exception):
    """An input that cannot be protected; the message is the reason shown to the user."""


@dataclass
class LoadedImage:
    pixels: np.ndarray  # uint8 (H, W, C), C = 1 or 3: the channels that get the perturbation
    alpha: np.ndarray | None  # uint8 (H, W), copied unchanged; None without alpha
    mode: str  # the mode Pillow opened the file in
    out_mode: str  # L, LA, RGB or RGBA
    icc_profile: bytes | None = None

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) after EXIF orientation."""
        return int(self.pixels.shape[1]), int(self.pixels.shape[0])

    @property
    def channels(self) -> int:
        return int(self.pixels.shape[2])


def identify(path: str | os.PathLike) -> bool:
    """Whether Pillow recognises the file from its header (cheap: nothing is decoded)."""
    try:
        with open_image(path) as im:
            return im.format not in _NOT_PICTURES
    except ImageTooLarge:  # a picture, refused with its reason when it is loaded
        return True
    except Exception:  # noqa: BLE001 - any failure means "not an image we know"
        return False


def load_image(path: str | os.PathLike) -> LoadedImage:
    """Decode ``path`` completely, apply EXIF orientation and split it per the mode table.
    An image over Pillow's ``MAX_IMAGE_PIXELS`` is refused: "image too large (N pixels, limit M)"."""
    try:
        with open_image(path) as im:
            im.load()
            mode = im.mode
            icc = im.info.get("icc_profile") if mode in _KEEP_ICC else None
            im = ImageOps.exif_transpose(im)
            pixels, alpha, out_mode = _split(im)
    except UnreadableImage:
        raise
    except ImageTooLarge as e:
        raise UnreadableImage(e.reason) from None
    except MemoryError:
        raise
    except Exception as e:  # noqa: BLE001 - Pillow raises many types for bad files
        raise UnreadableImage(f"cannot read image: {type(e).__name__}: {e}") from None
    return LoadedImage(pixels, alpha, mode, out_mode, icc)


def _split(im: Image.Image) -> tuple[np.ndarray, np.ndarray | None, str]:
    mode = im.mode
    if mode in ("L", "RGB"):
        a = np.asarray(im, dtype=np.uint8)
        return (a[..., None] if a.ndim == 2 else a), None, mode
    if mode in ("RGBA", "LA", "RGBa", "La", "PA"):
        target = {"RGBa": "RGBA", "La": "LA", "PA": "RGBA"}.get(mode, mode)
        a = np.asarray(im.convert(target) if target != mode else im, dtype=np.uint8)
        return np.ascontiguousarray(a[..., :-1]), np.ascontiguousarray(a[..., -1]), target
    if mode == "P":
        if "transparency" in im.info:
            a = np.asarray(im.convert("RGBA"), dtype=np.uint8)
            return np.ascontiguousarray(a[..., :3]), np.ascontiguousarray(a[..., 3]), "RGBA"
        return np.asarray(im.convert("RGB"), dtype=np.uint8), None, "RGB"
    if mode == "1":
        return np.asarray(im.convert("L"), dtype=np.uint8)[..., None], None, "L"
    if mode.startswith("I;16") or mode == "I":
        # 16-bit grey to 8-bit: the nearest 8-bit level round(v / 257), shared with the data loaders.
        try:
            return grey16_to_uint8(im)[..., None], None, "L"
        except ValueError as e:
            raise UnreadableImage(str(e)) from None
    if mode in ("CMYK", "YCbCr", "LAB", "HSV", "RGBX"):
        return np.asarray(im.convert("RGB"), dtype=np.uint8), None, "RGB"
    raise UnreadableImage(f"unsupported image mode {mode}")


def compose(pixels: np.ndarray, alpha: np.ndarray | None, out_mode: str) -> Image.Image:
    """The output picture from perturbed ``pixels`` and the original ``alpha``."""
    if alpha is not None:
        arr = np.concatenate([pixels, alpha[..., None]], axis=2)
    else:
        arr = pixels[..., 0] if pixels.shape[2] == 1 else pixels
    return Image.fromarray(np.ascontiguousarray(arr), out_mode)


#: Output formats: name -> (file suffix, Pillow format, lossless, save options). PNG uses
#: zlib level 1: on a noisy 12-MP photo it encodes about 4x faster than Pillow's default
#: level 6 for files about 10% larger (the pixels are the same).
FORMATS = {
    "png": (".png", "PNG", True, {"compress_level": 1}),
    "tiff": (".tiff", "TIFF", True, {"compression": "tiff_adobe_deflate"}),
    "webp": (".webp", "WEBP", False, {"quality": 95, "method": 4}),
    "jpeg": (".jpg", "JPEG", False, {"quality": 95, "subsampling": 0}),
}


def save_image(im: Image.Image, dest: Path, fmt: str, icc_profile: bytes | None) -> None:
    _, pil_format, _, options = FORMATS[fmt]
    extra = {"icc_profile": icc_profile} if icc_profile else {}
    with open(dest, "wb") as f:
        im.save(f, format=pil_format, **options, **extra)
