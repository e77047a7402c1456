"""The MI-reduction loss of MI-UE (paper Eq. 2), vectorised, and a naive reference form.

For a batch of features z (B x D) with labels y, per sample j:

    sim_j  = log(1 + sum_{k: y_k != y_j} e^{s_jk} / sum_{k: y_k = y_j} e^{s_jk}),
             s_jk = cos(z_j, z_k) / tau  (positives include k = j, as in the paper's sums)
    dist_j = log(1 + scale * sum_{k != j: y_k = y_j} ||z_j - z_k||_2)
    loss   = mean_j (sim_j + zeta * dist_j)

``sim_j`` equals ``logsumexp_k s_jk - logsumexp_{k: y_k = y_j} s_jk``, which is how it is
computed: one B x B Gram matrix, no B x B x D tensor, and a fused backward. Choice documented against
Eq. 2: the paper's formula sums the distance over every k in the batch, but its text (and
Theorem 5.1, which bounds MI by the intra-class covariance) asks for the intra-class
distance, and the official code sums over same-class samples only; we do the same. The
official code also divides the sum by the feature dimension (``scale = 1/D``); the paper
does not, and neither do we by default (``distance_scale="dim"`` gives the code's form).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def mi_loss_autograd(z: torch.Tensor, y: torch.Tensor, *, tau: float = 0.1, zeta: float = 0.1,
                     distance_scale: float = 1.0) -> torch.Tensor:
    """Per-sample loss by plain autograd (the readable form; tests check the fused one against it)."""
    z = _at_least_fp32(z)
    gram = z @ z.T
    sq = gram.diagonal()
    inv_norm = sq.clamp_min(_TINY).rsqrt()
    sim = gram * (inv_norm[:, None] * inv_norm[None, :] / tau)
    same = y[:, None] == y[None, :]
    loss = torch.logsumexp(sim, dim=1) - torch.logsumexp(sim.masked_fill(~same, float("-inf")), dim=1)
    if zeta:
        d2 = sq[:, None] + sq[None, :] - 2.0 * gram
        pairs = same & ~torch.eye(len(y), dtype=torch.bool, device=z.device)
        dist = torch.where(pairs, d2.clamp_min(_D2_FLOOR), torch.ones_like(d2)).sqrt() * pairs
        loss = loss + zeta * torch.log1p(distance_scale * dist.sum(1))
    return loss


def _at_least_fp32(z):
    # bf16/fp16 features from autocast are promoted; float64 (tests) is kept.
    return z if z.dtype == torch.float64 else z.float()


_TINY = 1e-24  # squared-norm floor: an all-zero feature row gets cosine 0 with everything
_D2_FLOOR = 1e-12  # squared-distance floor: keeps sqrt's gradient finite for coinciding features


class _MILoss(torch.autograd.Function):
    """Eq. 2 with a hand-written backward: one B x B matrix product forward and one backward
    (autograd needs three), and a handful of fused element-wise passes over B x B.

    Everything is a function of the Gram matrix G = z z^T: cosines C = G_jk r_j r_k with
    r = diag(G)^-1/2, squared distances D2 = G_jj + G_kk - 2 G_jk. Since every cosine is at
    most 1, exp((C - 1) / tau) never overflows, and the self term keeps the positive sum >= 1.
    """

    @staticmethod
    def forward(ctx, z, y, tau, zeta, scale):
        gram = z @ z.T
        q = gram.diagonal().clone()
        valid = q > _TINY
        r = q.clamp_min(_TINY).rsqrt()
        cos = gram * r[:, None] * r[None, :]
        e = torch.exp((cos - 1.0) * (1.0 / tau))
        same = (y[:, None] == y[None, :]).to(z.dtype)
        total, pos = e.sum(1), (e * same).sum(1)
        loss = total.log() - pos.log()
        dist = root = None
        if zeta:
            same.fill_diagonal_(0.0)  # now: same class, k != j
            d2 = q[:, None] + q[None, :] - 2.0 * gram
            keep = (d2 > _D2_FLOOR).to(z.dtype) * same
            root = d2.clamp_min_(_D2_FLOOR).sqrt_()
            dist_sum = (root * same).sum(1)
            loss = loss + zeta * torch.log1p(scale * dist_sum)
            dist = keep / root  # d sqrt(D2) / d D2 = 1 / (2 root), masked
            root = dist_sum
            same.fill_diagonal_(1.0)
        ctx.save_for_backward(z, cos, e, same, total, pos, r, valid, dist, root)
        ctx.tau, ctx.zeta, ctx.scale = tau, zeta, scale
        return loss

    @staticmethod
    def backward(ctx, g):
        z, cos, e, same, total, pos, r, valid, dist, dist_sum = ctx.saved_tensors
        tau, zeta, scale = ctx.tau, ctx.zeta, ctx.scale
        # dL/dC_jk for anchor row j.
        w = e * ((g / total)[:, None] - same * (g / pos)[:, None]) * (1.0 / tau)
        wc = w * cos
        d_gram = w * r[:, None] * r[None, :]
        d_q = -0.5 * r * r * (wc.sum(1) + wc.sum(0)) * valid
        if zeta:
            u = dist * (g * zeta * scale / (2.0 * (1.0 + scale * dist_sum)))[:, None]  # dL/dD2_jk
            d_gram = d_gram - 2.0 * u
            d_q = d_q + u.sum(1) + u.sum(0)
        dz = (d_gram + d_gram.T) @ z + 2.0 * d_q[:, None] * z
        return dz, None, None, None, None


def mi_loss_per_sample(z: torch.Tensor, y: torch.Tensor, *, tau: float = 0.1, zeta: float = 0.1,
                       distance_scale: float = 1.0) -> torch.Tensor:
    """Per-sample MI-UE loss, shape (B,). Extra memory is O(B^2 + B*D)."""
    return _MILoss.apply(_at_least_fp32(z), y, float(tau), float(zeta), float(distance_scale))


def mi_loss(z, y, *, tau=0.1, zeta=0.1, distance_scale=1.0) -> torch.Tensor:
    """Batch mean of :func:`mi_loss_per_sample`."""
    return mi_loss_per_sample(z, y, tau=tau, zeta=zeta, distance_scale=distance_scale).mean()


def mi_loss_naive(z, y, *, tau=0.1, zeta=0.1, distance_scale=1.0) -> torch.Tensor:
    """The same loss written the direct way (B x B x D cosine broadcast, a Python loop per
    sample for the distance term). Kept only as the benchmark's baseline."""
    z = z.float()
    sim = F.cosine_similarity(z[:, None, :], z[None, :, :], dim=-1) / tau
    e = sim.exp()
    same = (y[:, None] == y[None, :]).float()
    pos = (e * same).sum(1)
    neg = (e * (1 - same)).sum(1)
    loss = torch.log1p(neg / pos)
    if zeta:
        terms = []
        for j in range(len(y)):
            others = (y == y[j]) & (torch.arange(len(y), device=z.device) != j)
            d = torch.linalg.vector_norm(z[j][None, :] - z[others], dim=1).sum()
            terms.append(torch.log1p(distance_scale * d))
        loss = loss + zeta * torch.stack(terms)
    return loss.mean()
