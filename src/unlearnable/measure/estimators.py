"""One-dimensional mutual-information estimators, vectorised over many slices at once.

Every estimator follows one interface, in the spirit of scikit-learn:

    est = KSGMI(k=3)
    est.get_params()           # {"k": 3, ...}: goes into every result
    mi = est.estimate(u, v)    # u, v: (m, n) arrays -> (m,) MI in nats, one per row
    est.fit(u, v).mi_          # the same, stored on the estimator

Row ``i`` of ``u`` and row ``i`` of ``v`` are the two variables of slice ``i`` (``n``
paired samples); 1-D inputs are treated as one slice. All values are in nats and are
never clipped at 0 (clipping each slice before averaging inflates a sliced MI near 0).

Known bias at n = 2000 on bivariate Gaussians (truth 0 / 0.1438 / 0.8304 nats at
rho = 0 / 0.5 / 0.9), see docs/measuring-mi.md: histogram plug-in +0.97, Miller-Madow
+0.65, KSG ~+0.003, binned KDE ~+0.008, MINE slightly below the truth (a lower bound).
"""

from __future__ import annotations

import contextlib
import math
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from ..errors import UnlearnableError

__all__ = ["MIEstimator", "HistogramMI", "KDEMI", "KSGMI", "MINEMI", "ESTIMATORS", "make_estimator",
           "gaussian_mi"]


def gaussian_mi(rho) -> np.ndarray:
    """Closed form for a bivariate Gaussian with correlation ``rho``: -1/2 ln(1 - rho^2)."""
    rho = np.asarray(rho, dtype=np.float64)
    return -0.5 * np.log1p(-rho * rho)


def _as_slices(u, v) -> tuple[np.ndarray, np.ndarray, bool]:
    u, v = np.asarray(u), np.asarray(v)
    single = u.ndim == 1
    if single:
        u, v = u[None, :], v[None, :]
    if u.ndim != 2 or u.shape != v.shape:
        raise UnlearnableError(f"u and v must both be (m, n) arrays of the same shape, got {u.shape} and {v.shape}")
    if u.shape[1] < 2:
        raise UnlearnableError(f"need at least 2 samples per slice, got {u.shape[1]}")
    if not (np.isfinite(u).all() and np.isfinite(v).all()):
        raise UnlearnableError("u and v must be finite (NaN or inf found)")
    return u, v, single


def _standardize(x: torch.Tensor) -> torch.Tensor:
    """Rows to mean 0, standard deviation 1 (constant rows stay constant at 0)."""
    x = x - x.mean(dim=1, keepdim=True)
    sd = x.std(dim=1, keepdim=True, unbiased=False)
    return x / torch.where(sd > 0, sd, torch.ones_like(sd))


def default_jobs() -> int:
    """Worker threads for estimators: the CPUs this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


@contextlib.contextmanager
def _torch_threads(n: int):
    """Run torch single-threaded inside each worker: parallelism comes from the workers.

    (Intra-op threads on a busy machine spin-wait on descheduled peers; independent
    workers over chunks of slices degrade gracefully instead.)
    """
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


class MIEstimator:
    """Base class: subclasses implement :meth:`_estimate` on an (m, n) chunk of slices.

    ``n_jobs`` worker threads process chunks of ``chunk`` slices in parallel (numpy and
    torch release the GIL); results do not depend on ``n_jobs``.
    """

    name = "base"
    #: slices processed per vectorised chunk (bounds peak memory)
    chunk = 128
    n_jobs: int | None = None
    _param_names: tuple[str, ...] = ()

    def get_params(self) -> dict:
        return {k: getattr(self, k) for k in self._param_names}

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"{type(self).__name__}({args})"

    def estimate(self, u, v) -> np.ndarray:
        """Per-slice MI in nats: ``u``, ``v`` of shape (m, n) -> (m,) (a float for 1-D input)."""
        u, v, single = _as_slices(u, v)
        m = u.shape[0]
        out = np.empty(m, dtype=np.float64)
        starts = list(range(0, m, self.chunk))

        def work(a):
            out[a:a + self.chunk] = self._estimate(u[a:a + self.chunk], v[a:a + self.chunk], a // self.chunk)

        jobs = min(len(starts), self.n_jobs or default_jobs())
        with _torch_threads(1):
            if jobs <= 1:
                for a in starts:
                    work(a)
            else:
                with ThreadPoolExecutor(jobs) as ex:
                    list(ex.map(work, starts))
        return float(out[0]) if single else out

    def fit(self, u, v) -> "MIEstimator":
        self.mi_ = self.estimate(u, v)
        return self

    def _estimate(self, u: np.ndarray, v: np.ndarray, chunk_index: int) -> np.ndarray:
        raise NotImplementedError


# --------------------------------------------------------------------------- histogram

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

_BIG = 1e30


class KSGMI(MIEstimator):
    """Kraskov-Stoegbauer-Grassberger estimator 1 with the max-norm (k = 3 by default).

    I = psi(k) + psi(n) - mean(psi(nx + 1) + psi(ny + 1)), where eps_i is the distance of
    point i to its k-th nearest neighbour in the max-norm of the joint space and nx, ny
    count the other points strictly closer than eps_i in each marginal. Values are not
    clipped at 0 (independent data gives about 0, sometimes below). Each slice is
    standardised per variable; ties (duplicate rows, all-zero ReLU features) are broken
    with seeded uniform noise of amplitude ``noise`` standard deviations (default 1e-6 in
    float32, 1e-10 in float64, i.e. a few units of the last place); the marginal counts
    use a radius a relative 1e-5 (float32) or 1e-9 (float64) below eps_i, so the
    neighbour that defines eps_i is never counted through rounding.

    The exact k-NN search is vectorised over all slices of a chunk: points are cut into
    equal-count strips in u (``strip * sqrt(n)`` points each), sorted by v inside each
    strip, and each point's candidates are the ``window`` points on each side of it in
    its own strip and in the two adjacent strips (found by a batched ``searchsorted``).
    A candidate set is accepted only when every point outside it is provably at least as
    far as the k-th candidate; the few points that fail the proof (sparse tails) are
    solved by brute force within their u- or v-range, whichever holds fewer points. The
    neighbour distances equal those of a full k-NN search on the same (rounded) values.
    """

    name = "ksg"
    _param_names = ("k", "noise", "seed", "precision")
    chunk = 64

    def __init__(self, k: int = 3, noise: float | None = None, seed: int = 0, precision: str = "float32",
                 window: int = 8, strip: float = 2.5):
        if int(k) < 1:
            raise UnlearnableError(f"KSG k must be at least 1, got {k}")
        if precision not in ("float32", "float64"):
            raise UnlearnableError(f"KSG precision must be 'float32' or 'float64', got {precision!r}")
        self.k, self.seed, self.precision = int(k), int(seed), precision
        self.noise = float(noise) if noise is not None else (1e-6 if precision == "float32" else 1e-10)
        self.window, self.strip = int(max(window, k)), float(strip)
        self._shrink = 1e-5 if precision == "float32" else 1e-9

    def _estimate(self, u, v, chunk_index=0):
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + chunk_index)
        m, n = u.shape
        if n <= self.k:
            raise UnlearnableError(f"KSG with k={self.k} needs more than {self.k} samples per slice, got {n}")
        x = _standardize(torch.as_tensor(u, dtype=torch.float64))
        y = _standardize(torch.as_tensor(v, dtype=torch.float64))
        if self.noise > 0:  # uniform in [-noise, noise]
            x += self.noise * (2 * torch.rand(x.shape, generator=gen, dtype=torch.float64) - 1)
            y += self.noise * (2 * torch.rand(y.shape, generator=gen, dtype=torch.float64) - 1)
        dt = torch.float32 if self.precision == "float32" else torch.float64
        x, y = x.to(dt), y.to(dt)
        sy, oy = torch.sort(y, dim=1)
        eps, orig, sx, ox = self._knn_eps(x, y, sy, torch.gather(x, 1, oy))
        # counts, in float64 on the same (rounded) coordinates, with the queries in sorted
        # order (u-sorted for nx, v-sorted for ny): the binary searches then stay in cache
        eps_i = torch.empty((m, n), dtype=eps.dtype)
        eps_i.scatter_(1, orig, eps)  # back to the original order
        sx, sy = sx.double(), sy.double()
        rx = torch.gather(eps_i, 1, ox).double() * (1 - self._shrink)
        ry = torch.gather(eps_i, 1, oy).double() * (1 - self._shrink)
        nx = (torch.searchsorted(sx, sx + rx) - torch.searchsorted(sx, sx - rx, right=True) - 1).clamp_(min=0)
        ny = (torch.searchsorted(sy, sy + ry) - torch.searchsorted(sy, sy - ry, right=True) - 1).clamp_(min=0)
        psi = torch.special.digamma(torch.arange(1, n + 1, dtype=torch.float64))  # psi(c + 1), c = 0 .. n-1
        terms = psi[nx] + psi[ny]
        mean = terms.sum(1) / n
        const = psi[self.k - 1] + psi[n - 1]  # psi(k) + psi(n)
        return (const - mean).numpy()

    def _knn_eps(self, x: torch.Tensor, y: torch.Tensor, yv: torch.Tensor, xv: torch.Tensor):
        """k-th neighbour max-norm distance of every point, in a strip layout.

        ``yv`` is ``y`` sorted per row and ``xv`` the matching ``x``. Returns (eps, index,
        x sorted, x argsort), each (m, n): eps of the points in strip order (padding
        dropped) and their original indices, then the sorted rows of x and its argsort.
        """
        m, n = x.shape
        k, W = self.k, self.window
        dt = x.dtype
        L = int(min(n, max(2 * W + 2, math.ceil(self.strip * math.sqrt(n)))))
        S = -(-n // L)
        npad = S * L - n
        P = W + 1  # sentinels on each side of a strip
        order = torch.argsort(x, dim=1)
        xs = torch.gather(x, 1, order)
        ys = torch.gather(y, 1, order)
        xs_real, ys_real = xs, ys
        order_p = torch.nn.functional.pad(order, (0, npad), value=0) if npad else order
        if npad:
            pad = torch.full((m, npad), _BIG, dtype=dt)
            xs, ys = torch.cat([xs, pad], 1), torch.cat([ys, pad], 1)
        xs, ys = xs.view(m, S, L), ys.view(m, S, L)
        umin, umax = xs[:, :, 0], xs[:, :, -1]  # strip bounds in u (before sorting by v)
        ov = torch.argsort(ys, dim=2)
        orig = torch.gather(order_p.view(m, S, L), 2, ov)  # original index of each slot
        U = torch.gather(xs, 2, ov)
        V = torch.gather(ys, 2, ov)
        valid = V < _BIG / 2
        # strips padded with P sentinels: far away in v, so they are never neighbours and
        # a window reaching past the end of a strip passes its boundary check
        Up = torch.nn.functional.pad(U, (P, P), value=0.0)
        Vp = torch.cat([torch.full((m, S, P), -_BIG, dtype=dt), V, torch.full((m, S, P), _BIG, dtype=dt)], 2)
        top = [torch.full((m, S, L), _BIG, dtype=dt) for _ in range(k)]  # k smallest so far, ascending
        b1, b2 = torch.empty((m, S, L), dtype=dt), torch.empty((m, S, L), dtype=dt)

        def push(d, tops, tmp):  # insert d into the running k smallest (a sorting network step)
            for a in range(k - 1, 0, -1):
                torch.maximum(tops[a - 1], d, out=tmp)
                torch.minimum(tops[a], tmp, out=tops[a])
            torch.minimum(tops[0], d, out=tops[0])

        def dist(cu, cv, qu, qv, o1, o2):  # max-norm distance into o1 (o2 is scratch)
            torch.sub(cu, qu, out=o1).abs_()
            torch.sub(cv, qv, out=o2).abs_()
            return torch.maximum(o1, o2, out=o1)

        tmp = torch.empty((m, S, L), dtype=dt)
        # own strip: shifted views, the point itself excluded
        for t in range(-W, W + 1):
            if t:
                push(dist(Up[:, :, P + t:P + t + L], Vp[:, :, P + t:P + t + L], U, V, b1, b2), top, tmp)
        checks = [(Vp[:, :, 0:L], Vp[:, :, 2 * W + 2:2 * W + 2 + L])]  # v[pos-W-1], v[pos+W+1]
        # the two adjacent strips: windows j-W .. j+W-1 around the insertion point j of v
        Upf, Vpf = Up.reshape(m, -1), Vp.reshape(m, -1)
        width = L + 2 * P
        for ds in (-1, 1):
            if S == 1:
                break
            src = slice(max(0, -ds), S - max(0, ds))
            dst = slice(max(0, ds), S - max(0, -ds))
            j = torch.searchsorted(V[:, dst].contiguous(), V[:, src].contiguous())  # (m, S-1, L)
            base = ((torch.arange(S)[dst] * width + P).view(1, -1, 1) + j).reshape(m, -1)  # flat index of j
            lo_v = torch.full((m, S, L), -_BIG, dtype=dt)
            hi_v = torch.full((m, S, L), _BIG, dtype=dt)
            lo_v[:, src] = torch.gather(Vpf, 1, base - (W + 1)).view_as(j)
            hi_v[:, src] = torch.gather(Vpf, 1, base + W).view_as(j)
            checks.append((lo_v, hi_v))
            Us, Vs = U[:, src], V[:, src]
            tops = [t_[:, src] for t_ in top]
            o1, o2, o3 = (torch.empty_like(Us) for _ in range(3))
            ix = base - (W + 1)
            for _ in range(2 * W):
                ix += 1
                cu = torch.gather(Upf, 1, ix).view_as(Us)
                cv = torch.gather(Vpf, 1, ix).view_as(Us)
                push(dist(cu, cv, Us, Vs, o1, o2), tops, o3)
        eps = top[k - 1]
        # proof that no point outside the candidates is closer than eps
        ok = eps < _BIG / 2
        for lo_v, hi_v in checks:
            ok &= (V - lo_v >= eps) & (hi_v - V >= eps)
        if S > 2:  # strips s-2 and below / s+2 and above must be at least eps away in u
            far_lo = torch.full((m, S), -_BIG, dtype=dt)
            far_hi = torch.full((m, S), _BIG, dtype=dt)
            far_lo[:, 2:] = umax[:, :-2]
            far_hi[:, :-2] = umin[:, 2:]
            ok &= (U - far_lo.unsqueeze(-1) >= eps) & (far_hi.unsqueeze(-1) - U >= eps)
        ok |= ~valid
        eps, U, V, valid, ok = (t.reshape(m, S * L) for t in (eps, U, V, valid, ok))
        bad = (~ok).nonzero(as_tuple=False)
        if bad.numel():
            r, c = bad[:, 0], bad[:, 1]
            eps = eps.clone()
            eps[r, c] = self._brute(xs_real, ys_real, yv, xv, r, U[r, c], V[r, c], eps[r, c])
        keep = valid.nonzero(as_tuple=True)[1].view(m, n)  # real points, in slot order
        return torch.gather(eps, 1, keep), torch.gather(orig.reshape(m, S * L), 1, keep), xs_real, order

    def _brute(self, xs, ys, yv, xv, rows, qu, qv, upper):
        """Exact k-th distance for a few points by brute force within a 1-D range.

        ``upper`` bounds each point's k-th distance, so its neighbours lie within
        |du| <= upper and within |dv| <= upper: whichever range holds fewer points (in the
        u-sorted rows ``xs``/``ys`` or the v-sorted rows ``yv``/``xv``) is searched.
        """
        m, n = xs.shape
        k = self.k
        # widen the range a little: the neighbour that defines ``upper`` must not drop out by rounding
        upper = torch.where(upper < _BIG / 2, upper * (1 + 1e-5), torch.full_like(upper, _BIG)).double()
        prim = torch.stack([xs, yv]).reshape(-1)  # the sorted coordinate, (2 m n)
        sec = torch.stack([ys, xv]).reshape(-1)  # the other one
        # one searchsorted for all rows: shift row i by i * span so that the rows concatenate sorted
        a = torch.empty((2, len(rows)), dtype=torch.long)
        b = torch.empty((2, len(rows)), dtype=torch.long)
        for mode, (sorted_, q) in enumerate(((xs, qu), (yv, qv))):
            srt = sorted_.double()
            span = float(srt[:, -1].max() - srt[:, 0].min()) * 2 + 4 * float(upper.clamp(max=1e6).max()) + 1
            shift = torch.arange(m, dtype=torch.float64).unsqueeze(1) * span
            flat = (srt + shift).reshape(-1)
            qs = q.double() + shift[rows, 0]
            up = upper.clamp(max=span / 4)
            srt_q, perm = torch.sort(qs)  # queries in order: the binary searches stay in cache
            a[mode, perm] = torch.searchsorted(flat, srt_q - up[perm]) - rows[perm] * n
            b[mode, perm] = torch.searchsorted(flat, srt_q + up[perm], right=True) - rows[perm] * n
        mode = ((b[1] - a[1]) < (b[0] - a[0])).long()
        a, b = a.gather(0, mode[None])[0], b.gather(0, mode[None])[0]
        qp = torch.where(mode == 1, qv, qu)
        qs = torch.where(mode == 1, qu, qv)
        start = a + (mode * m + rows) * n
        width = b - a
        order = torch.argsort(width)  # blocks of similar width: little padding
        ws = width[order].tolist()
        out = torch.empty_like(qu)
        budget = 1 << 20
        i = 0
        while i < len(ws):
            j = i + 1
            while j < len(ws) and (j + 1 - i) * ws[j] <= budget:
                j += 1
            sel = order[i:j]
            wb = int(ws[j - 1])
            i = j
            if wb <= k:  # fewer than k other points in range: cannot happen for a true upper bound
                out[sel] = _BIG
                continue
            off = torch.arange(wb)
            inside = off < width[sel].unsqueeze(1)
            idx = (start[sel].unsqueeze(1) + off).clamp_(max=2 * m * n - 1)
            d = torch.maximum((prim[idx] - qp[sel].unsqueeze(1)).abs_(), (sec[idx] - qs[sel].unsqueeze(1)).abs_())
            d.masked_fill_(~inside, _BIG)
            # the point itself is in range at distance 0: the k-th other point is the (k+1)-th smallest
            out[sel] = torch.topk(d, k + 1, dim=1, largest=False).values[:, k]
        return out


# --------------------------------------------------------------------------- MINE

class MINEMI(MIEstimator):
    """MINE: the Donsker-Varadhan bound sup_T E_p[T] - ln E_{p x p}[e^T], T a small MLP.

    One statistics network per slice (2 -> hidden -> hidden -> 1, ELU), all slices of a
    chunk trained together with batched matmuls. Training uses the moving-average
    corrected gradient of Belghazi et al. (2018) (E[e^T] in the denominator replaced by
    its exponential moving average, rate ``ema``), Adam, ``iters`` steps of ``batch``
    samples (the paper: batch 1000, 500 iterations). Samples are split once: a fraction
    ``holdout`` is never trained on and the bound is evaluated there (marginal terms
    over ``eval_shuffles`` random re-pairings), so the value is not inflated by
    over-fitting; it is a lower-bound estimate and can be slightly negative.
    """

    name = "mine"
    _param_names = ("hidden", "iters", "batch", "lr", "ema", "holdout", "eval_shuffles", "seed")
    chunk = 25

    def __init__(self, hidden: int = 32, iters: int = 500, batch: int = 1000, lr: float = 2e-3, ema: float = 0.01,
                 holdout: float = 0.3, eval_shuffles: int = 8, seed: int = 0, device: str = "cpu"):
        if int(iters) < 1 or int(batch) < 2 or int(hidden) < 1:
            raise UnlearnableError("MINE needs iters >= 1, batch >= 2 and hidden >= 1")
        if not (0 < holdout < 1):
            raise UnlearnableError(f"MINE holdout fraction must be in (0, 1), got {holdout}")
        self.hidden, self.iters, self.batch, self.lr, self.ema = int(hidden), int(iters), int(batch), float(lr), float(ema)
        self.holdout, self.eval_shuffles, self.seed = float(holdout), int(eval_shuffles), int(seed)
        self.device = device

    def _net(self, m, g):
        h, dev = self.hidden, self.device

        def init(fan_in, shape):
            return ((torch.rand(shape, generator=g) * 2 - 1) / math.sqrt(fan_in)).to(dev).requires_grad_()
        return [init(2, (m, 2, h)), init(2, (m, 1, h)), init(h, (m, h, h)), init(h, (m, 1, h)),
                init(h, (m, h, 1)), init(h, (m, 1, 1))]

    @staticmethod
    def _T(params, a, b):
        w1, b1, w2, b2, w3, b3 = params
        z = torch.stack([a, b], -1)  # (m, B, 2)
        z = torch.nn.functional.elu(torch.baddbmm(b1, z, w1))
        z = torch.nn.functional.elu(torch.baddbmm(b2, z, w2))
        return torch.baddbmm(b3, z, w3).squeeze(-1)  # (m, B)

    def _estimate(self, u, v, chunk_index=0):
        m, n = u.shape
        dev = self.device
        x = _standardize(torch.as_tensor(u, dtype=torch.float64)).float().to(dev)
        y = _standardize(torch.as_tensor(v, dtype=torch.float64)).float().to(dev)
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + chunk_index)
        perm = torch.randperm(n, generator=gen).to(dev)
        n_hold = max(2, int(round(self.holdout * n)))
        if n - n_hold < 2:
            raise UnlearnableError(f"MINE needs more samples per slice (got {n})")
        tr, ho = perm[n_hold:], perm[:n_hold]
        xt, yt, xh, yh = x[:, tr], y[:, tr], x[:, ho], y[:, ho]
        nt = xt.shape[1]
        bs = min(self.batch, nt)
        params = self._net(m, gen)
        opt = torch.optim.Adam(params, lr=self.lr)
        ma = torch.ones(m, device=dev)
        cpu = gen
        for _ in range(self.iters):
            i = torch.randint(nt, (bs,), generator=cpu).to(dev) if bs < nt else torch.arange(nt, device=dev)
            j = torch.randint(nt, (bs,), generator=cpu).to(dev)
            t_joint = self._T(params, xt[:, i], yt[:, i])
            et = torch.exp(self._T(params, xt[:, i], yt[:, j]))
            with torch.no_grad():
                ma = (1 - self.ema) * ma + self.ema * et.mean(1)
            # gradient of E[T] - E[e^T] / ma: the bias-corrected DV gradient (summed over slices)
            loss = -(t_joint.mean(1) - et.mean(1) / ma).sum()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        with torch.no_grad():
            joint = self._T(params, xh, yh).double().mean(1)
            logs = []
            for _ in range(self.eval_shuffles):
                shift = int(torch.randint(1, n_hold, (1,), generator=cpu))
                t = self._T(params, xh, torch.roll(yh, shift, dims=1)).double()
                logs.append(torch.logsumexp(t, 1) - math.log(n_hold))
            marg = torch.logsumexp(torch.stack(logs, 1), 1) - math.log(len(logs))
        return (joint - marg).cpu().numpy()


ESTIMATORS = {"hist": lambda **kw: HistogramMI(**kw), "hist-mm": lambda **kw: HistogramMI(correction="miller-madow", **kw),
              "kde": lambda **kw: KDEMI(**kw), "ksg": lambda **kw: KSGMI(**kw), "mine": lambda **kw: MINEMI(**kw)}


def make_estimator(name: str, **params) -> MIEstimator:
    """An estimator by its short name: hist, hist-mm, kde, ksg, mine."""
    key = name.strip().lower()
    if key not in ESTIMATORS:
        raise UnlearnableError(f"unknown MI estimator {name!r}; choose from {', '.join(ESTIMATORS)}")
    return ESTIMATORS[key](**params)
