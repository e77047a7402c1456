"""What the page shows of a finished job: the image list, before / after / perturbation
previews, and the zip of the protected folder."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

from ..fsutil import atomic_path
from ..protect.images import load_image
from ..protect.manifest import NAME, read_manifest_file

PREVIEW_PX = 384  # longest side of a preview
KINDS = ("before", "after", "perturbation")


def images(output_dir: Path) -> list[dict]:
    """The finished images of a protect output folder, as the manifest records them."""
    path = output_dir / NAME
    if not path.is_file():
        return []
    manifest = read_manifest_file(path)
    keep = ("input", "output", "class", "size", "linf_255", "psnr", "ssim")
    return [{k: e.get(k) for k in keep} for e in manifest.get("images", [])]


def _fit(im: Image.Image, resample) -> Image.Image:
    w, h = im.size
    scale = PREVIEW_PX / max(w, h)
    if scale >= 1:
        return im
    return im.resize((max(1, round(w * scale)), max(1, round(h * scale))), resample)


def preview(input_dir: Path, output_dir: Path, entry: dict, kind: str, eps_255: int) -> bytes:
    """A PNG preview. ``perturbation``: protected minus original, scaled so that the budget
    (``eps_255``) reaches full black / white (grey is unchanged), and sub-sampled rather than
    averaged when shrunk so the pattern keeps its amplitude."""
    if kind not in KINDS:
        raise KeyError(kind)
    before = load_image(input_dir / entry["input"])
    if kind == "before":
        im = Image.fromarray(before.pixels[..., 0] if before.channels == 1 else before.pixels)
        im = _fit(im, Image.Resampling.LANCZOS)
    else:
        after = load_image(output_dir / entry["output"])
        if kind == "after":
            im = Image.fromarray(after.pixels[..., 0] if after.channels == 1 else after.pixels)
            im = _fit(im, Image.Resampling.LANCZOS)
        else:
            ch = min(before.channels, after.channels)
            diff = after.pixels[..., :ch].astype(np.float32) - before.pixels[..., :ch].astype(np.float32)
            amp = np.clip(127.5 + diff * (127.5 / max(eps_255, 1)), 0, 255).round().astype(np.uint8)
            im = _fit(Image.fromarray(amp[..., 0] if ch == 1 else amp), Image.Resampling.NEAREST)
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def zip_output(output_dir: Path, dest: Path) -> Path:
    """``dest``: a zip of the protected images and the manifest, rebuilt when the manifest is
    newer than it. Temporary and lock files are left out."""
    manifest = output_dir / NAME
    if dest.is_file() and dest.stat().st_mtime >= manifest.stat().st_mtime:
        return dest
    with atomic_path(dest, suffix=".zip") as tmp:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED) as z:  # PNG is compressed already
            for p in sorted(output_dir.rglob("*")):
                if p.is_file() and not p.is_symlink() and not any(part.startswith(".")
                                                                    for part in p.relative_to(output_dir).parts):
                    z.write(p, p.relative_to(output_dir).as_posix())
    return dest
