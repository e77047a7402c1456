"""Image quality of a protected picture against its original: L-inf, PSNR and SSIM.

SSIM follows Wang et al. (2004, "Image quality assessment: from error visibility to
structural similarity"): a Gaussian window of standard deviation 1.5 truncated to 11 x 11
taps, K1 = 0.01, K2 = 0.03, dynamic range 255, population (not sample) statistics,
computed on the luminance Y = 0.299 R + 0.587 G + 0.114 B (ITU-R BT.601, unrounded; the
grey channel for grey images). Borders are reflected for the filtering and the mean is
taken over pixels at least 5 pixels from the border (all pixels when the image is
narrower than 11 pixels), the convention of scikit-image's ``structural_similarity`` with
``gaussian_weights=True``. Large images are processed in row strips with a 5-row halo,
which gives exactly the full-image result.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.ndimage import correlate1d

SIGMA, RADIUS = 1.5, 5
K1, K2, RANGE = 0.01, 0.03, 255.0
STRIP_ROWS = 128  # rows per strip (+ a 5-row halo): about a dozen float64 maps of this size are alive
_LUMA = np.array([0.299, 0.587, 0.114])


def _window() -> np.ndarray:
    k = np.arange(-RADIUS, RADIUS + 1, dtype=np.float64)
    w = np.exp(-0.5 * (k / SIGMA) ** 2)
    return w / w.sum()


def luminance(pixels: np.ndarray) -> np.ndarray:
    """uint8 (H, W, C) -> float64 (H, W)."""
    if pixels.shape[2] == 1:
        return pixels[..., 0].astype(np.float64)
    return pixels.astype(np.float64) @ _LUMA


def linf_255(a: np.ndarray, b: np.ndarray) -> int:
    """Largest absolute difference in levels, strip by strip."""
    worst = 0
    for r0 in range(0, a.shape[0], STRIP_ROWS):
        d = np.abs(a[r0:r0 + STRIP_ROWS].astype(np.int16) - b[r0:r0 + STRIP_ROWS].astype(np.int16))
        worst = max(worst, int(d.max(initial=0)))
    return worst


def psnr(a: np.ndarray, b: np.ndarray) -> float | None:
    """PSNR in dB over all (non-alpha) channels; None for identical images (infinite)."""
    sq = 0.0
    for r0 in range(0, a.shape[0], STRIP_ROWS):
        d = a[r0:r0 + STRIP_ROWS].astype(np.float64) - b[r0:r0 + STRIP_ROWS]
        sq += float(np.vdot(d, d))
    mse = sq / a.size
    return None if mse == 0 else 10.0 * math.log10(RANGE ** 2 / mse)


def _ssim_map(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    w = _window()

    def blur(t):
        return correlate1d(correlate1d(t, w, axis=0, mode="reflect"), w, axis=1, mode="reflect")

    mx, my = blur(x), blur(y)
    vx, vy, cxy = blur(x * x) - mx * mx, blur(y * y) - my * my, blur(x * y) - mx * my
    c1, c2 = (K1 * RANGE) ** 2, (K2 * RANGE) ** 2
    return ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    """Mean SSIM of the luminance of two uint8 (H, W, C) images (see the module docstring)."""
    h, w = a.shape[:2]
    crop = RADIUS if min(h, w) > 2 * RADIUS else 0
    total, count = 0.0, 0
    for r0 in range(crop, h - crop, STRIP_ROWS):
        r1 = min(r0 + STRIP_ROWS, h - crop)
        lo, hi = max(0, r0 - RADIUS), min(h, r1 + RADIUS)
        m = _ssim_map(luminance(a[lo:hi]), luminance(b[lo:hi]))[r0 - lo:r1 - lo, crop:w - crop]
        total += float(m.sum())
        count += m.size
    return total / count
