"""The binned kernel-density MI estimator."""

from __future__ import annotations

import math

import torch

from ...errors import UnlearnableError
from .base import MIEstimator, _standardize


class KDEMI(MIEstimator):
    """Gaussian-kernel KDE with Silverman's bandwidth; MI of the smoothed density, on a grid.

    Each slice is standardised and whitened (w1 = u, w2 = (v - r u) / sqrt(1 - r^2)), and
    the joint density is a KDE with an isotropic kernel of Silverman's factor
    h = n^(-1/6) (d = 2) on the whitened slice, i.e. a kernel with covariance h^2 times
    the sample covariance, as scipy's ``gaussian_kde`` uses (an axis-aligned kernel
    over-smooths correlated slices). The marginals are the marginals of that same
    smoothed joint (1-D KDEs with the same factor), so the estimate is the MI of one
    proper distribution: H(u) + H(v) - H(w) - 1/2 ln(1 - r^2). Samples are linearly
    binned onto a ``grid``-point (per axis) mesh spanning the data +- 4 bandwidths,
    smoothed by Toeplitz kernel matrices (batched matmul over all slices of a chunk), and
    H = -sum p ln p dA is integrated with p renormalised on the grid; logarithms are
    taken only of positive grid values (p ln p -> 0 where the density underflows), so
    nothing becomes -inf. Bias at n = 2000: about +0.008 nats (rho = 0), +0.01 (rho = 0.5
    and 0.9).
    """

    name = "kde"
    _param_names = ("grid", "bandwidth")
    chunk = 250

    def __init__(self, grid: int = 128, bandwidth: str = "silverman", dtype=torch.float32):
        if int(grid) < 16:
            raise UnlearnableError(f"KDE grid must have at least 16 points, got {grid}")
        if bandwidth != "silverman":
            raise UnlearnableError(f"unknown KDE bandwidth rule {bandwidth!r}; only 'silverman' is implemented")
        self.grid = int(grid)
        self.bandwidth = bandwidth
        self.dtype = dtype

    def _lin_bin(self, x: torch.Tensor, h: float):
        """Linear binning of rows of ``x`` onto per-row grids; returns (left index, right weight, step)."""
        g = self.grid
        lo = x.amin(1, keepdim=True) - 4 * h
        step = (x.amax(1, keepdim=True) + 4 * h - lo) / (g - 1)
        pos = (x - lo) / step
        i0 = pos.floor().clamp_(0, g - 2)
        w1 = (pos - i0).clamp_(0, 1)
        return i0.long(), w1, step.squeeze(1)

    def _kernels(self, step: torch.Tensor, h: float) -> torch.Tensor:
        """(m, g, g) Gaussian kernel matrices on each row's grid (density units, 1/step)."""
        g = self.grid
        d = torch.arange(-(g - 1), g, dtype=step.dtype)
        z = d[None, :] * (step[:, None] / h)
        kvec = torch.exp(-0.5 * z * z) / (h * math.sqrt(2 * math.pi))
        idx = torch.arange(g)[:, None] - torch.arange(g)[None, :] + (g - 1)
        return kvec[:, idx]

    def _entropy_1d(self, x: torch.Tensor, h: float) -> torch.Tensor:
        m, n = x.shape
        g = self.grid
        i0, w1, step = self._lin_bin(x, h)
        counts = torch.zeros(m, g, dtype=x.dtype)
        counts.scatter_add_(1, i0, 1 - w1)
        counts.scatter_add_(1, i0 + 1, w1)
        p = torch.bmm(self._kernels(step, h), counts.unsqueeze(2)).squeeze(2) / n
        return self._entropy(p, step)

    @staticmethod
    def _entropy(p: torch.Tensor, cell: torch.Tensor) -> torch.Tensor:
        p = p.flatten(1).clamp_min_(0)
        mass = p.sum(1) * cell
        p = p / mass[:, None]  # renormalise on the grid
        plogp = torch.where(p > 0, p * torch.log(torch.where(p > 0, p, torch.ones_like(p))), torch.zeros_like(p))
        return -plogp.sum(1) * cell

    def _estimate(self, u, v, chunk_index=0):
        m, n = u.shape
        g = self.grid
        zu = _standardize(torch.as_tensor(u, dtype=torch.float64))
        zv = _standardize(torch.as_tensor(v, dtype=torch.float64))
        r = (zu * zv).mean(1).clamp(-1 + 1e-12, 1 - 1e-12)
        s = torch.sqrt(1 - r * r)
        w2 = (zv - r[:, None] * zu) / s[:, None]
        dt = self.dtype
        zu, zv, w2 = zu.to(dt), zv.to(dt), w2.to(dt)
        # Silverman's factor for d = 2, (n (d + 2) / 4)^(-1 / (d + 4)) = n^(-1/6), times the
        # sample covariance: isotropic h on the whitened slice. The marginals of that smoothed
        # joint are 1-D KDEs with the same factor, so the three densities are one distribution.
        h2 = float(n) ** (-1.0 / 6.0)
        hu, hv = self._entropy_1d(zu, h2), self._entropy_1d(zv, h2)
        # joint: bilinear binning of (w1, w2) = (zu, w2) onto a g x g mesh
        ia, wa, sa = self._lin_bin(zu, h2)
        ib, wb, sb = self._lin_bin(w2, h2)
        base = (torch.arange(m)[:, None] * (g * g)) + ia * g + ib
        counts = torch.zeros(m * g * g, dtype=dt)
        for da, fa in ((0, 1 - wa), (1, wa)):
            for db, fb in ((0, 1 - wb), (1, wb)):
                counts.index_add_(0, (base + (da * g + db)).flatten(), (fa * fb).flatten())
        counts = counts.view(m, g, g)
        p = torch.bmm(torch.bmm(self._kernels(sa, h2), counts), self._kernels(sb, h2).transpose(1, 2)) / n
        hw = self._entropy(p, sa * sb)
        mi = hu.double() + hv.double() - hw.double() - 0.5 * torch.log(s.double() ** 2)
        return mi.numpy()


# --------------------------------------------------------------------------- KSG
