"""MINE: a neural lower bound on MI (Belghazi et al.), many slices trained at once."""

from __future__ import annotations

import math

import torch

from ...errors import UnlearnableError
from .base import MIEstimator, _standardize


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
