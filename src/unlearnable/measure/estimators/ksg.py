"""The Kraskov-Stoegbauer-Grassberger (KSG) k-nearest-neighbour MI estimator."""

from __future__ import annotations

import math

import torch

from ...errors import UnlearnableError
from .base import MIEstimator, _standardize


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
