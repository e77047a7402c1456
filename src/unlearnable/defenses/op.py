"""OP, orthogonal projection (Sandoval-Segura et al. 2023, "What Can We Learn from
Unlearnable Datasets?"): remove the directions a linear model finds predictive.

Many unlearnable perturbations are linearly separable shortcuts. OP fits a multinomial
logistic-regression model ``softmax(W x + b)`` on the flattened poisoned training images,
takes an orthonormal basis ``Q`` (D x K) of the span of its class weight vectors (QR of
``W^T``) and projects every training image onto the orthogonal complement,
``x - Q Q^T x``. A data defense, run once before training; the test set is untouched.

Choices where the paper leaves freedom (documented defaults):
- the linear model is fitted full-batch by L-BFGS (SciPy's L-BFGS-B, at most ``iters`` =
  100 iterations) on pixels in [0, 1] with an L2 penalty of 1e-4 on ``W`` (it keeps the
  weights finite when the poisons make the data separable; only their directions matter);
- the projection is taken about the training set's mean image ``m``:
  ``x - Q Q^T (x - m)``. Every image then carries the same component along the removed
  directions (the mean's), so those directions hold no information about the label, as
  with ``x - Q Q^T x``; but the images stay in the range and brightness of the untouched
  test set. Projecting about the origin leaves pixels far outside [0, 1] (the class
  directions include the overall brightness pattern), and bringing them back by a rescale
  changes contrast and offset against the test set: on Fashion-MNIST clean training then
  fell from 88% to 47% test accuracy. The reference code sidesteps this by training on
  the float projection directly; images here are uint8, so the few pixels the centred
  projection pushes out of [0, 1] are clipped (``clipped_fraction`` records how many),
  then everything is rounded to uint8.
Everything runs on ``device`` in chunks of 4096 images (memory O(chunk x D + D x K)).
Spec ``op``.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..data.dataset import ImageDataset
from .base import Defense, register_defense

CHUNK = 4096


def _flat_chunks(images: np.ndarray, device):
    for i in range(0, len(images), CHUNK):
        x = torch.from_numpy(images[i:i + CHUNK]).to(device)
        yield i, x.permute(0, 3, 1, 2).reshape(len(x), -1).float().div_(255.0)


def fit_linear(images: np.ndarray, labels: np.ndarray, num_classes: int, *, device="cpu", iters: int = 100,
               l2: float = 1e-4) -> torch.Tensor:
    """Multinomial logistic regression on flattened NCHW pixels; returns the (K, D) weights.

    SciPy's L-BFGS-B drives it; the loss and its gradient are computed by torch on
    ``device``, chunk by chunk (only the K x (D + 1) parameters cross to the host).
    """
    from scipy.optimize import minimize
    k, d = num_classes, int(np.prod(images.shape[1:]))
    y = torch.from_numpy(labels).to(device)
    n = len(labels)

    def loss_and_grad(theta: np.ndarray):
        wb = torch.from_numpy(theta).to(device=device, dtype=torch.float32).view(k, d + 1).requires_grad_(True)
        w, b = wb[:, :d], wb[:, d]
        total = torch.zeros((), device=device)
        grad = torch.zeros_like(wb)
        for i, x in _flat_chunks(images, device):
            loss = F.cross_entropy(x @ w.T + b, y[i:i + len(x)], reduction="sum") / n
            grad += torch.autograd.grad(loss, wb)[0]
            total += loss.detach()
        with torch.no_grad():
            total += 0.5 * l2 * (w * w).sum()
            grad[:, :d] += l2 * w
        return float(total), grad.double().cpu().numpy().ravel()

    res = minimize(loss_and_grad, np.zeros(k * (d + 1)), jac=True, method="L-BFGS-B",
                   options={"maxiter": iters, "gtol": 1e-6})
    return torch.from_numpy(res.x).float().view(k, d + 1)[:, :d].to(device)


def orthogonal_projection(images: np.ndarray, weights: torch.Tensor, *, device="cpu") -> tuple[np.ndarray, float]:
    """Project flattened images off span(weights rows) about the set's mean image, clip to
    [0, 1] and round to uint8; returns (images, fraction of pixels clipped)."""
    q, _ = torch.linalg.qr(weights.T.to(device))  # (D, K), orthonormal columns
    n, h, w, c = images.shape
    mean = torch.zeros(h * w * c, dtype=torch.float64, device=device)
    for _, x in _flat_chunks(images, device):  # pass 1: the mean image
        mean += x.sum(0, dtype=torch.float64)
    mean = (mean / max(1, n)).float()
    out = np.empty_like(images)
    clipped = 0
    for i, x in _flat_chunks(images, device):  # pass 2: project, clip, quantise
        p = x - ((x - mean) @ q) @ q.T
        clipped += int(((p < 0) | (p > 1)).sum())
        u8 = p.clamp_(0, 1).mul_(255.0).round_().to(torch.uint8)
        out[i:i + len(x)] = u8.reshape(len(x), c, h, w).permute(0, 2, 3, 1).cpu().numpy()
    return out, clipped / max(1, images.size)


@register_defense
class OrthogonalProjection(Defense):
    name, kind = "op", "data"

    def __init__(self, iters: int = 100, l2: float = 1e-4):
        self.iters, self.l2 = iters, l2

    def apply(self, train: ImageDataset, *, seed: int = 0, device=None) -> ImageDataset:
        device = device or "cpu"
        w = fit_linear(train.images, train.labels, train.num_classes, device=device, iters=self.iters, l2=self.l2)
        self.weights = w  # kept for inspection (tests, reports)
        projected, self.clipped_fraction = orthogonal_projection(train.images, w, device=device)
        return train.with_images(projected)
