"""NTGA: neural tangent generalisation attack (Yuan and Wu, "Neural Tangent Generalization
Attacks", ICML 2021).

The victim is modelled by the neural tangent kernel (NTK) of an infinitely wide
fully-connected ReLU network, whose training by gradient descent on squared error has a
closed form: after time t, predictions on inputs V are

    f(V) = K(V, B) K(B, B)^-1 (I - exp(-t K(B, B))) Y_B

for training inputs B with one-hot labels Y_B. The attack perturbs the training inputs so
that this trained predictor does badly on a clean held-out split: projected
signed-gradient *ascent* of the cross-entropy of f(V) against V's labels, through the
kernel and the time-t regressor (one eigendecomposition of K(B, B), differentiated in
closed form). The NTK is computed in closed form in torch
(the arc-cosine recursion for ReLU, ``depth`` hidden layers, weight variance ``w_var``,
bias variance ``b_var``), so no JAX is needed and gradients come from autograd.

Large training sets are attacked block-wise: the training set is split into blocks of at
most ``block_size`` images (in a seeded random order), each attacked against the same
held-out split with its own kernel. The block is shrunk further when its kernels and
their autograd intermediates would exceed ``max_kernel_mb``. A checkpoint follows every
block.

Defaults from the paper: eps 8/255, an FNN NTK, t = 64, blocks of 512 images for
CIFAR-10, 10 PGD steps. Our choices: the held-out split is ``val_size`` (1024) clean
training images drawn at random (they are poisoned in their own blocks as well); the
kernel is divided by its mean diagonal before ``exp(-t K)`` (t is then in units of the
kernel's scale); PGD step 2.5 eps / steps; depth 3, w_var 2, b_var 0.01; a small ridge
(1e-4 of the mean diagonal) in the solve. The ``cpu`` preset is the same (NTGA has no
model to train and runs quickly on a CPU at 28-32 px).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from ..errors import UnlearnableError
from ..progress import bar
from ..runtime import make_generator, resolve_device
from .base import (Attack, AttackResult, check_eps, check_positive, register_attack, rng_state, set_rng_state,
                   unchanged_presets)
from .pgd import pgd, project_dataset
from .source import RunRecord


@dataclass
class NTGAConfig:
    eps: float = 8 / 255
    depth: int = 3  # hidden layers of the fully-connected ReLU network
    w_var: float = 2.0
    b_var: float = 0.01
    t: float = 64.0  # training time of the kernel predictor; inf = trained to convergence
    block_size: int = 512
    val_size: int = 1024
    pgd_steps: int = 10
    step_size: float | None = None  # None: 2.5 * eps / pgd_steps
    max_kernel_mb: float = 2048.0
    device: str = "auto"

    def validate(self):
        check_eps(self.eps)
        check_positive("ntga", self, ("depth", "block_size", "val_size", "pgd_steps"))
        if self.w_var <= 0 or self.b_var < 0 or self.t <= 0 or self.max_kernel_mb <= 0:
            raise UnlearnableError("ntga: w_var, t and max_kernel_mb must be positive and b_var non-negative")
        if self.step_size is not None and self.step_size <= 0:
            raise UnlearnableError("ntga: step_size must be positive")


def relu_ntk(a: torch.Tensor, b: torch.Tensor, *, depth: int, w_var: float, b_var: float,
             a_sq: torch.Tensor | None = None, b_sq: torch.Tensor | None = None) -> torch.Tensor:
    """NTK between rows of ``a`` (n, d) and ``b`` (m, d) for a ReLU MLP with ``depth`` hidden
    layers (NTK parameterisation). ``a_sq``/``b_sq``: the inputs' squared norms, if known."""
    d = a.shape[1]
    a_sq = (a * a).sum(1) if a_sq is None else a_sq
    b_sq = (b * b).sum(1) if b_sq is None else b_sq
    cov = w_var * (a @ b.T) / d + b_var  # first-layer pre-activation covariance
    va, vb = w_var * a_sq / d + b_var, w_var * b_sq / d + b_var
    ntk = cov
    for _ in range(depth):
        norm = torch.sqrt(va[:, None] * vb[None, :])
        cos = (cov / norm).clamp(-1 + 1e-7, 1 - 1e-7)
        theta = torch.arccos(cos)
        cov = w_var * norm * (torch.sin(theta) + (math.pi - theta) * cos) / (2 * math.pi) + b_var
        dot = w_var * (math.pi - theta) / (2 * math.pi)
        ntk = ntk * dot + cov
        va, vb = w_var * va / 2 + b_var, w_var * vb / 2 + b_var  # E[relu(u)^2] = var / 2
    return ntk


RIDGE = 1e-4  # of the mean diagonal: keeps the solve well posed for near-duplicate images


def kernel_predict(k_bb: torch.Tensor, k_vb: torch.Tensor, y_b: torch.Tensor, t: float) -> torch.Tensor:
    """Predictions on V of the kernel regressor trained for time ``t`` on B (one-hot ``y_b``).

    That is ``K_VB (K_BB + r I)^-1 (I - exp(-t K_BB)) Y_B`` with the kernels divided by
    K_BB's mean diagonal and the ridge r = 1e-4; ``kernel_predict_reference`` writes it so.
    Here it goes through one eigendecomposition (``_KernelSolve``): for the 2,500-image
    block a matrix exponential's backward takes 15x as long on the CPU."""
    scale = k_bb.diagonal().mean().detach()
    return (k_vb / scale) @ _KernelSolve.apply(k_bb / scale, y_b, float(t), RIDGE)


def kernel_predict_reference(k_bb: torch.Tensor, k_vb: torch.Tensor, y_b: torch.Tensor, t: float) -> torch.Tensor:
    """The readable form of ``kernel_predict`` (matrix exponential and solve; tests compare)."""
    scale = k_bb.diagonal().mean().detach()
    kb, kv = k_bb / scale, k_vb / scale
    eye = torch.eye(kb.shape[0], dtype=kb.dtype, device=kb.device)
    target = y_b if math.isinf(t) else (eye - torch.linalg.matrix_exp(-t * kb)) @ y_b
    return kv @ torch.linalg.solve(kb + RIDGE * eye, target)


def _spectral_filter(lam: torch.Tensor, t: float, ridge: float) -> tuple[torch.Tensor, torch.Tensor]:
    """f(l) = (1 - e^(-t l)) / (l + r) (1 / (l + r) for t = inf) and its derivative f'(l)."""
    lam = lam.clamp_min(0)  # the kernel is PSD; rounding leaves tiny negative eigenvalues
    inv = 1 / (lam + ridge)
    if math.isinf(t):
        return inv, -inv * inv
    grow = -torch.expm1(-t * lam)  # 1 - e^(-t l), exact for small t l
    return grow * inv, (t * (1 - grow) - grow * inv) * inv


class _KernelSolve(torch.autograd.Function):
    """M = f(K) Y for a symmetric K = U diag(l) U^T: M = U (f(l) * (U^T Y)).

    Backward (Daleckii-Krein): for a matrix function of a symmetric matrix, the derivative
    in any direction E is U (L o (U^T E U)) U^T with L_ij = (f(l_i) - f(l_j)) / (l_i - l_j)
    and L_ii = f'(l_i). With M = f(K) Y and incoming gradient G, dK = U (L o (U^T G)(U^T Y)^T) U^T
    and dY = f(K) G. The divided difference switches to f' at the mean when two eigenvalues
    are closer than 1e-8 (the difference quotient would cancel there; f' is smooth). Unlike
    autograd through ``eigh`` nothing divides by an eigenvalue gap, so repeated eigenvalues
    are harmless."""

    @staticmethod
    def forward(ctx, k, y, t, ridge):
        lam, u = torch.linalg.eigh(k)
        lam = lam.clamp_min(0)  # as _spectral_filter reads it; the backward's gaps use the same values
        f = _spectral_filter(lam, t, ridge)[0]
        uy = u.T @ y
        ctx.save_for_backward(u, lam, f, uy)
        ctx.t, ctx.ridge = t, ridge
        return u @ (f[:, None] * uy)

    @staticmethod
    def backward(ctx, g):
        u, lam, f, uy = ctx.saved_tensors
        ug = u.T @ g
        gap = lam[:, None] - lam[None, :]
        close = gap.abs() < 1e-8  # the diagonal included: there f' at the mean is f'(l_i)
        mid_df = _spectral_filter((lam[:, None] + lam[None, :]) / 2, ctx.t, ctx.ridge)[1]
        ratio = torch.where(close, mid_df, (f[:, None] - f[None, :]) / torch.where(close, torch.ones_like(gap), gap))
        dk = u @ (ratio * (ug @ uy.T)) @ u.T if ctx.needs_input_grad[0] else None
        dy = u @ (f[:, None] * ug) if ctx.needs_input_grad[1] else None
        return dk, dy, None, None


def block_limit(block_size: int, val_size: int, depth: int, max_mb: float, bytes_per: int = 8) -> int:
    """The largest block (<= block_size) whose kernels and autograd intermediates fit max_mb."""
    per_entry = bytes_per * (6 * depth + 8)  # intermediates kept per kernel entry, generously
    b = block_size
    while b > 1 and (b * b + val_size * b) * per_entry / 2**20 > max_mb:
        b = int(b * 0.9)
    return max(1, b)


@register_attack
class NTGA(Attack):
    name = "ntga"
    Config = NTGAConfig
    presets = unchanged_presets(NTGAConfig)

    def generate(self, train, *, seed: int = 0, workdir=None, resume: bool = False) -> AttackResult:
        cfg = self.config
        device = resolve_device(cfg.device)
        gen = make_generator(seed)
        n, k = len(train), train.num_classes
        val_idx = torch.randperm(n, generator=gen)[:min(cfg.val_size, n)]
        order = torch.randperm(n, generator=gen)
        block = block_limit(cfg.block_size, len(val_idx), cfg.depth, cfg.max_kernel_mb)
        blocks = [order[i:i + block] for i in range(0, n, block)]
        step = cfg.step_size or 2.5 * cfg.eps / cfg.pgd_steps
        x_all = torch.from_numpy(train.images).permute(0, 3, 1, 2)  # uint8 NCHW on the CPU
        y_all = torch.from_numpy(train.labels)
        xv = (x_all[val_idx].to(device).double() / 255).flatten(1)
        yv = y_all[val_idx].to(device)
        xv_sq = (xv * xv).sum(1)
        delta = torch.zeros(x_all.shape, dtype=torch.float32)
        record = RunRecord(self.name, cfg, train, seed=seed, workdir=workdir, resume=resume,
                           runtime_keys={"device", "max_kernel_mb"}, match={"block": block})
        start, history = 0, []
        if record.state is not None:
            delta.copy_(record.state["delta"])
            set_rng_state(gen, record.state["rng"])
            start, history = record.state["epoch"], list(record.state["history"])
        kw = dict(depth=cfg.depth, w_var=cfg.w_var, b_var=cfg.b_var)
        with bar(total=len(blocks), initial=start, desc="ntga", unit="block") as pb:
            for bi in range(start, len(blocks)):
                idx = blocks[bi]
                xb = x_all[idx].to(device).double() / 255
                yb = F.one_hot(y_all[idx].to(device), k).double()
                losses = []

                def loss_fn(inp, xb=xb, yb=yb, losses=losses):
                    flat = inp.flatten(1)
                    k_bb = relu_ntk(flat, flat, **kw)
                    k_vb = relu_ntk(xv, flat, a_sq=xv_sq, **kw)
                    loss = F.cross_entropy(kernel_predict(k_bb, k_vb, yb, cfg.t), yv)
                    losses.append(float(loss.detach()))
                    return loss

                d = pgd(loss_fn, xb, delta[idx].to(device).double(), steps=cfg.pgd_steps, step_size=step,
                        eps=cfg.eps, minimize=False)
                delta[idx] = d.float().cpu()
                history.append({"epoch": bi + 1, "images": len(idx), "val_ce_first": round(losses[0], 5),
                                "val_ce_last": round(losses[-1], 5), "seconds": record.seconds()})
                pb.update()
                record.save({"epoch": bi + 1, "delta": delta, "rng": rng_state(gen), "history": history})
        delta = project_dataset(train.images, delta.clamp_(-cfg.eps, cfg.eps), cfg.eps)
        info = {"history": history, "config": asdict(cfg), "seconds": record.seconds(),
                "resumed_from_epoch": start, "block": block}
        return AttackResult(delta=delta, info=info)

