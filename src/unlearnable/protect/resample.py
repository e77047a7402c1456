"""Working resolution <-> full resolution, as explicit linear maps.

A photo of any size is optimised at a small square working resolution S (32 by
default) and protected at its own resolution:

* ``down``: area averaging from H x W to S x S (each working pixel is the mean of the
  source area it covers, fractional pixels weighted by their overlap). This is what the
  surrogate sees of the clean image.
* ``up``: bilinear interpolation from S x S to H x W (half-pixel centres, borders
  clamped; the same weights as ``torch.nn.functional.interpolate(mode="bilinear",
  align_corners=False)``). This turns the working perturbation into the full-resolution one.
  Every weight row is a convex combination, so ``|up(delta)| <= max |delta|``: the budget
  holds at full resolution before rounding.
* ``seen = down @ up`` (S x S per axis): what the working-resolution view of the
  protected image contains of the perturbation. The optimisation puts ``seen(delta)``
  (not ``delta``) into the surrogate, so that the surrogate is trained and attacked on
  exactly the working-resolution version of the full-resolution result (before rounding
  and clipping), rather than on a perturbation that the resampling would blur away.

Both maps are separable (one matrix per axis) and are applied in row strips, so a
4000 x 3000 photo never needs more than a strip of float values.
"""

from __future__ import annotations

from functools import cached_property

import numpy as np

STRIP_ROWS = 256  # rows per strip at full resolution (bounds the float working memory)


def area_matrix(n_out: int, n_in: int) -> np.ndarray:
    """(n_out, n_in) weights of area averaging; rows sum to 1. Works for n_out > n_in too."""
    edges = np.arange(n_out + 1, dtype=np.float64) * (n_in / n_out)
    lo, hi = edges[:-1, None], edges[1:, None]
    j = np.arange(n_in, dtype=np.float64)[None, :]
    overlap = np.clip(np.minimum(hi, j + 1) - np.maximum(lo, j), 0.0, None)
    return overlap / (hi - lo)


def bilinear_matrix(n_out: int, n_in: int) -> np.ndarray:
    """(n_out, n_in) weights of bilinear interpolation with half-pixel centres (torch's
    ``align_corners=False``): source coordinate ``(i + 0.5) * n_in / n_out - 0.5``, clamped at 0."""
    src = np.maximum((np.arange(n_out, dtype=np.float64) + 0.5) * (n_in / n_out) - 0.5, 0.0)
    i0 = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
    i1 = np.minimum(i0 + 1, n_in - 1)
    w1 = src - i0
    m = np.zeros((n_out, n_in), dtype=np.float64)
    rows = np.arange(n_out)
    np.add.at(m, (rows, i0), 1.0 - w1)
    np.add.at(m, (rows, i1), w1)
    return m


class Geometry:
    """The maps between one image of ``height`` x ``width`` and the S x S working grid."""

    def __init__(self, height: int, width: int, size: int):
        self.height, self.width, self.size = int(height), int(width), int(size)
        self.down_h, self.down_w = area_matrix(size, height), area_matrix(size, width)
        self.up_h, self.up_w = bilinear_matrix(height, size), bilinear_matrix(width, size)

    @cached_property
    def seen(self) -> tuple[np.ndarray, np.ndarray]:
        """(S x S, S x S): ``down_h @ up_h`` and ``down_w @ up_w``."""
        return self.down_h @ self.up_h, self.down_w @ self.up_w

    def downsample(self, pixels: np.ndarray) -> np.ndarray:
        """uint8 (H, W, C) -> float64 (S, S, C) area average, accumulated strip by strip."""
        acc = np.zeros((self.size, self.width, pixels.shape[2]), dtype=np.float64)
        for r0 in range(0, self.height, STRIP_ROWS):
            strip = pixels[r0:r0 + STRIP_ROWS].astype(np.float64)
            acc += np.tensordot(self.down_h[:, r0:r0 + STRIP_ROWS], strip, axes=(1, 0))
        return np.tensordot(acc, self.down_w, axes=(1, 1)).transpose(0, 2, 1)  # (S, C, S) -> (S, S, C)

    def upsample_rows(self, delta: np.ndarray, r0: int, r1: int) -> np.ndarray:
        """float (S, S, C) -> float64 (r1 - r0, W, C): rows ``r0:r1`` of ``up(delta)``."""
        rows = np.tensordot(self.up_h[r0:r1], delta.astype(np.float64), axes=(1, 0))  # (r, S, C)
        return np.tensordot(rows, self.up_w, axes=(1, 1)).transpose(0, 2, 1)  # (r, C, W) -> (r, W, C)


def apply_perturbation(pixels: np.ndarray, delta: np.ndarray, geometry: Geometry, eps_255: int) -> np.ndarray:
    """Protected uint8 (H, W, C) = clip(x + clip(round(255 * up(delta)), -e, e), 0, 255).

    ``delta`` is the (S, S, C) working perturbation in pixel units (C may be 1 for a
    grey image). Rounding is to the nearest level (half to even); the integer
    perturbation is then clipped to ``eps_255`` levels, so the L-inf budget holds on the
    final pixels whatever the rounding did. Computed in strips of :data:`STRIP_ROWS`.
    """
    out = np.empty_like(pixels)
    for r0 in range(0, pixels.shape[0], STRIP_ROWS):
        r1 = min(r0 + STRIP_ROWS, pixels.shape[0])
        q = np.clip(np.rint(geometry.upsample_rows(delta, r0, r1) * 255.0), -eps_255, eps_255)
        out[r0:r1] = np.clip(pixels[r0:r1].astype(np.int16) + q.astype(np.int16), 0, 255).astype(np.uint8)
    return out
