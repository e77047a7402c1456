"""The histogram plug-in MI estimator, with an optional Miller-Madow correction."""

from __future__ import annotations

import math

import numpy as np

from ...errors import UnlearnableError
from .base import MIEstimator


class HistogramMI(MIEstimator):
    """Plug-in MI of a 2-D histogram (the paper's default: 100 bins per axis).

    Each slice is min-max scaled into [0, 1] per variable (MI is invariant to affine maps
    of each variable); bin ``i`` is [i/b, (i+1)/b) and the maximum goes into the last bin.
    ``correction="miller-madow"`` adds (K - 1) / 2n to each entropy (K = occupied bins).
    The plug-in estimate is biased upwards by roughly (b - 1)^2 / 2n nats on independent
    data while n is not much larger than b^2 (0.97 at n = 2000, 0.48 at n = 5000).
    All slices of a chunk are binned with one ``bincount``.
    """

    name = "hist"
    _param_names = ("bins", "correction")
    chunk = 128

    def __init__(self, bins: int = 100, correction: str | None = None):
        if int(bins) < 2:
            raise UnlearnableError(f"histogram bins must be at least 2, got {bins}")
        if correction not in (None, "none", "miller-madow"):
            raise UnlearnableError(f"unknown histogram correction {correction!r}; use None or 'miller-madow'")
        self.bins = int(bins)
        self.correction = None if correction in (None, "none") else correction
        self.name = "hist-mm" if self.correction else "hist"
        self._xlogx = np.zeros(1)

    def _bin_index(self, x: np.ndarray) -> np.ndarray:
        lo = x.min(axis=1, keepdims=True)
        span = x.max(axis=1, keepdims=True) - lo
        scale = np.where(span > 0, self.bins / np.where(span > 0, span, 1), 0).astype(x.dtype)
        idx = ((x - lo) * scale).astype(np.intp)
        np.minimum(idx, self.bins - 1, out=idx)  # the maximum (and rounding spill-over) -> last bin
        return idx

    def _estimate(self, u, v, chunk_index=0):
        dt = np.float32 if (u.dtype == np.float32 and v.dtype == np.float32) else np.float64
        u, v = u.astype(dt, copy=False), v.astype(dt, copy=False)
        m, n = u.shape
        b = self.bins
        if self._xlogx.shape[0] < n + 1:
            c = np.arange(n + 1, dtype=np.float64)
            self._xlogx = c * np.log(np.maximum(c, 1))
        tab = self._xlogx
        iu, iv = self._bin_index(u), self._bin_index(v)
        joint = iu * b
        joint += iv
        joint += (np.arange(m, dtype=np.intp) * (b * b))[:, None]
        cj = np.bincount(joint.ravel(), minlength=m * b * b).reshape(m, b * b)
        iu += (np.arange(m, dtype=np.intp) * b)[:, None]
        iv += (np.arange(m, dtype=np.intp) * b)[:, None]
        cu = np.bincount(iu.ravel(), minlength=m * b).reshape(m, b)
        cv = np.bincount(iv.ravel(), minlength=m * b).reshape(m, b)
        # H = ln n - sum c ln c / n for each histogram, so I = ln n - (Su + Sv - Suv) / n.
        su, sv, sj = tab[cu].sum(1), tab[cv].sum(1), tab[cj].sum(1)
        mi = math.log(n) - (su + sv - sj) / n
        if self.correction == "miller-madow":
            ku, kv, kj = (np.count_nonzero(c, axis=1) for c in (cu, cv, cj))
            mi += ((ku - 1) + (kv - 1) - (kj - 1)) / (2.0 * n)
        return mi


# --------------------------------------------------------------------------- KDE
